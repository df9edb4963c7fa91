"""replicas: cross-replica (synchronized) BN, the batch split over R devices along axis 0.

The model's statistics are the exact moments of the union (bnconform.caseformat.model): the same numbers as
the unsplit batch, with the Bessel factor of the global N. The cases are built so that the usual
wrong combinations land far away: replicas whose means are far apart (the variance must include
the between-replica term, and with unequal sizes the mean of means is not the global mean),
unequal and empty replicas (count weighting), one sample per replica (a local Bessel factor
N/(N-1) is 1/0), 1e4 + N(0, 1) in float32 (E[x^2] - E[x]^2 across replicas loses every digit),
Bessel and biased running variances, channels first and last, and inference after synchronized
training steps.
"""

from __future__ import annotations

import numpy as np

from ..caseformat.model import Config, RunningStats
from ..reference import oracle
from .spec import EVAL, TRAIN, Spec

FAMILY = "replicas"


def per_replica(sizes, means, scale: float = 1.0):
    """Input maker: the samples of replica r (consecutive along axis 0) ~ N(means[r], scale^2)."""
    offsets = np.repeat(np.asarray(means, dtype=np.float64), sizes)

    def make(rng, shape):
        return rng.normal(0.0, scale, size=shape) + offsets.reshape([-1] + [1] * (len(shape) - 1))
    return make


def _wrong_combinations(case) -> str:
    """How far the two classic wrong combinations land on the first training step."""
    step = next((s for s in case.steps if s.is_training and s.x.shape[0] > 0), None)
    if step is None:
        return ""
    x, axis = step.x.astype(np.float64), case.config.channel_axis
    parts = [x[a:b] for a, b in _bounds(step.replica_sizes) if b > a]
    moments = [oracle.batch_moments(p, axis) for p in parts]
    mean_of_means = np.mean([m for m, _ in moments], axis=0)
    mean_of_vars = np.mean([v for _, v in moments], axis=0)
    mean, var = step.expected["batch_mean"], step.expected["batch_var"]
    mean_gap = np.abs(mean_of_means - mean).max()
    means = (f"Averaging the replicas' means is off by up to {mean_gap:.3g} in the mean" if mean_gap > 1e-9 * (1 + np.abs(mean).max())
             else "Averaging the replicas' means is exact here (equal sizes)")
    return (f" {means}; averaging their variances is off by up to {np.abs(mean_of_vars - var).max():.3g} "
            f"(exact variance up to {np.abs(var).max():.3g}).")


def _bounds(sizes):
    ends = np.cumsum(sizes)
    return list(zip(ends - np.asarray(sizes), ends))


def _spec(name, text, sizes, channels=3, inner=(), axis=1, means=None, scale=1.0, steps=(TRAIN,), **knobs) -> Spec:
    """A case whose every step has the batch split as ``sizes``; ``inner`` = dims after the batch
    axis other than channels (channels at ``axis``)."""
    dims = list(inner)
    dims.insert(axis - 1, channels)
    shape = (sum(sizes), *dims)
    config = Config(channel_axis=axis, **knobs)
    make_x = per_replica(sizes, means if means is not None else [0.5] * len(sizes), scale)
    return Spec(FAMILY, name, lambda case, t=text: t + _wrong_combinations(case), config, [shape], steps, make_x,
                replica_sizes=[sizes] * len(steps))


def specs():
    yield _spec("r2_equal_train", "Two replicas of 4 samples each: synchronized moments equal the moments of "
                "the 8 samples.", (4, 4), means=[-1.0, 2.0])
    yield _spec("r4_equal_nchw_train", "Four replicas of 2 images (NCHW): the per-channel moments reduce over "
                "the samples of every replica and all positions.", (2, 2, 2, 2), inner=(3, 2),
                means=[-2.0, 0.0, 1.0, 3.0])
    yield _spec("r8_equal_train", "Eight replicas of 2 samples.", (2,) * 8, means=np.linspace(-3, 3, 8))
    yield _spec("r2_unequal_far_means_train", "Replicas of 6 and 2 samples with means -5 and +5: the global mean "
                "is -2.5, not the mean of means 0, and the variance includes the between-replica term.",
                (6, 2), means=[-5.0, 5.0])
    yield _spec("r4_unequal_train", "Replicas of 1, 3, 2 and 6 samples: statistics are count-weighted.",
                (1, 3, 2, 6), means=[-1.0, 0.0, 2.0, 4.0])
    yield _spec("r4_one_empty_train", "One of four replicas holds no sample: it contributes nothing (no NaN "
                "from its 0/0 moments, no weight in the mean of means).", (3, 0, 3, 2), means=[1.0, 0.0, -1.0, 3.0])
    yield _spec("r8_unequal_two_empty_train", "Eight replicas, two empty, the rest 1 to 4 samples.",
                (0, 1, 2, 3, 0, 4, 2, 4), means=[0.0, -2.0, -1.0, 0.0, 0.0, 1.0, 2.0, 3.0])
    yield _spec("r2_one_sample_each_bessel", "Two replicas of one sample each: the global N = 2 gives a Bessel "
                "factor of 2; a local factor N/(N-1) is 1/0.", (1, 1), means=[-1.0, 1.0])
    yield _spec("r4_far_means_equal_train", "Equal replicas with means -6, -2, 2, 6 and unit spread: the mean "
                "of means is right here, but the mean of variances (~1) misses the between-replica term (~20).",
                (3, 3, 3, 3), means=[-6.0, -2.0, 2.0, 6.0])
    yield _spec("r2_offset_1e4_float32_train", "1e4 + N(0, 1) in float32 on two replicas: combining "
                "E[x^2] - E[x]^2 across replicas cancels every digit of the variance.", (8, 8),
                means=[1e4, 1e4 + 0.5])
    yield _spec("r4_bessel_update", "Bessel running variance after a synchronized step: the factor is "
                "N/(N-1) with the global N = 8, not the per-replica N = 2.", (2, 2, 2, 2), means=[0.0, 1.0, -1.0, 2.0],
                running_stats=RunningStats(decay=0.5, variance="bessel"))
    yield _spec("r4_biased_update", "Biased running variance after a synchronized step.", (2, 2, 2, 2),
                means=[0.0, 1.0, -1.0, 2.0], running_stats=RunningStats(decay=0.5, variance="biased"))
    yield _spec("r2_nhwc_train", "Channels last (NHWC) on two unequal replicas.", (3, 1), channels=4, inner=(2, 2),
                axis=3, means=[-1.0, 3.0])
    yield _spec("r2_ncl_train", "Rank-3 (N, C, L) on two replicas.", (2, 3), inner=(4,), means=[2.0, -2.0])
    yield _spec("r4_train_train_eval", "Two synchronized training steps then inference on every replica with "
                "the synchronized running statistics.", (2, 3, 1, 2), means=[-2.0, 0.0, 1.0, 4.0],
                steps=(TRAIN, TRAIN, EVAL), running_stats=RunningStats(decay=0.6))
    yield _spec("r2_all_empty_train", "Every replica empty (batch of 0): the empty batch, y empty and the "
                "running state unchanged.", (0, 0), means=[0.0, 0.0], steps=(TRAIN, EVAL))
    yield _spec("r2_float64_train", "float64 inputs and parameters on two unequal replicas with far means.",
                (5, 3), means=[-3.0, 3.0], input_dtype="float64", param_dtype="float64")
    yield _spec("r4_equal_float64_train", "float64 inputs and parameters on four equal replicas (the split every "
                "sharded data-parallel API can express): float64 must stay float64 across the all-reduce.",
                (2, 2, 2, 2), means=[-3.0, -1.0, 1.0, 3.0], input_dtype="float64", param_dtype="float64")
    yield from _bessel_then_inference()


def _bessel_then_inference():
    """Bessel running variances read back by inference: the factor must use the global N."""
    bessel = RunningStats(decay=0.5, variance="bessel")
    yield _spec("r2_unequal_bessel_then_eval", "Replicas of 5 and 3 samples, Bessel running variance, then "
                "inference with it: the factor is 8/7 (global N), not 5/4 or 3/2 (one replica's N).", (5, 3),
                means=[-1.0, 2.0], steps=(TRAIN, EVAL), running_stats=bessel)
    yield _spec("r4_nhwc_bessel_train_train_eval", "Four NHWC replicas of 2 images (2 x 2 positions), two "
                "synchronized steps with a Bessel running variance, then inference: the factor is 32/31 "
                "(global N), not 8/7 (one replica's N).", (2, 2, 2, 2), channels=3, inner=(2, 2), axis=3,
                means=[0.0, 1.0, -1.0, 2.0], steps=(TRAIN, TRAIN, EVAL), running_stats=bessel)
    yield _spec("r8_one_sample_each_bessel_then_eval", "Eight replicas of one sample each, Bessel running "
                "variance, then inference: the factor is 8/7 (global N); one replica's N = 1 gives factor 1 "
                "(guarded) or 1/0.", (1,) * 8, means=np.linspace(-2, 2, 8), steps=(TRAIN, EVAL),
                running_stats=bessel)
