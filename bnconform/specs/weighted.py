"""weighted: per-sample weights on the batch moments (tf_slim batch_norm(batch_weights=...)).

tf_slim reshapes the [B] weights to [B, 1, ..., 1] and calls tf.nn.weighted_moments, which
broadcasts them over every reduced axis: mu = sum(w x) / sum(w), v = sum(w (x - mu)^2) / sum(w)
with both sums over batch AND spatial positions. The weighted moments normalize y and feed the
running update; the running variance is the biased kind (Bessel is undefined for weights).
Each description quotes how far a specific mistake lands (computed by the oracle).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..caseformat.model import Config, RunningStats
from .spec import EVAL, TRAIN, TRAIN_NO_UPDATE, Spec, gap

FAMILY = "weighted"


def _shifting(rng, shape):
    """Each call draws a batch with a new per-call mean and spread."""
    return rng.normal(rng.uniform(-2, 2), rng.uniform(0.5, 3.0), size=shape)


def _config(axis=1, **extra) -> Config:
    return Config(channel_axis=axis, epsilon=1e-3, running_stats=RunningStats(decay=0.9, variance="biased"), **extra)


def _unweighted(case) -> list:
    return [replace(s, sample_weights=None) for s in case.steps]


def _ignored(case, output="y") -> str:
    return f"ignoring the weights gives {output} off by up to {gap(case, output, steps=_unweighted(case)):.3g}"


def _fixed(*values):
    return lambda rng, batch, index: np.array(values, dtype=np.float64)


def _uniform(low, high):
    return lambda rng, batch, index: rng.uniform(low, high, size=batch)


def _weights():
    yield Spec(FAMILY, "constant_weights_equal_plain",
               "Every weight 2.5: the weighted moments equal the plain ones; dividing sum(w x) by the sample "
               "count instead of by sum(w) gives 2.5 times the mean.",
               _config(), [(6, 3)], (TRAIN, TRAIN, EVAL), _shifting, make_weights=_fixed(*[2.5] * 6))
    yield Spec(FAMILY, "integer_weights_as_repetition",
               lambda c: "Integer weights 1, 2, 3, 1, 2, 3 act as frequency weights (sample i counted w_i times); "
                         f"{_ignored(c)}.",
               _config(), [(6, 3)], (TRAIN, TRAIN, EVAL), _shifting, make_weights=_fixed(1, 2, 3, 1, 2, 3))
    yield Spec(FAMILY, "zero_weights_exclude_samples",
               lambda c: "Weights 1, 0, 1, 0, 1, 1 with outliers (+40) in the zero-weighted samples: they do not touch "
                         "the moments but are still normalized with them (large y there); "
                         f"{_ignored(c, 'running_mean')}.",
               _config(), [(6, 3)], (TRAIN, TRAIN, EVAL), _outliers_at(1, 3), make_weights=_fixed(1, 0, 1, 0, 1, 1))
    yield Spec(FAMILY, "fractional_weights_3steps",
               lambda c: "Weights U(0.1, 2) on three training steps, then eval: the running stats are EMAs of the "
                         f"weighted moments; {_ignored(c, 'running_var')}.",
               _config(), [(6, 3)], (TRAIN, TRAIN, TRAIN, EVAL), _shifting, make_weights=_uniform(0.1, 2.0))
    yield Spec(FAMILY, "wide_weight_range",
               lambda c: "Weights 10^U(-3, 3) (one sample dominates): moments follow the heavy samples; "
                         f"{_ignored(c)}.",
               _config(), [(8, 3)], (TRAIN, TRAIN, EVAL), _shifting,
               make_weights=lambda rng, batch, index: 10.0 ** rng.uniform(-3, 3, size=batch))


def _outliers_at(*rows):
    def make(rng, shape):
        x = rng.normal(0.0, 1.0, size=shape)
        x[list(rows)] += 40.0
        return x
    return make


def _layouts():
    for name, axis, shape in (("rank4_nhwc_broadcast", 3, (3, 2, 2, 4)), ("rank4_nchw", 1, (3, 2, 2, 2)),
                              ("rank3_ncl", 1, (4, 2, 5))):
        yield Spec(FAMILY, name,
                   lambda c, s=shape: f"Weights broadcast over every reduced axis of a {list(s)} input: sum(w) runs "
                                      f"over batch and spatial positions, so W = sum of sample weights x "
                                      f"{int(np.prod(s[1:]) // s[c.config.channel_axis])}; dividing by the sample "
                                      f"weights alone scales the mean by that factor; {_ignored(c)}.",
                   _config(axis=axis), [shape], (TRAIN, TRAIN, EVAL), _shifting, make_weights=_uniform(0.2, 3.0))
    yield Spec(FAMILY, "single_weighted_sample_spatial",
               lambda c: "Weights 0, 1, 0 on a 3x3 NCHW map: the moments are those of sample 1's H x W positions "
                         f"only (9 per channel); {_ignored(c)}.",
               _config(), [(3, 2, 3, 3)], (TRAIN, TRAIN, EVAL), _shifting, make_weights=_fixed(0, 1, 0))
    yield Spec(FAMILY, "float64",
               lambda c: f"Weighted moments in float64 (weights U(0.1, 2)): ~1e-13 agreement expected; {_ignored(c)}.",
               _config(input_dtype="float64", param_dtype="float64"), [(6, 3)], (TRAIN, TRAIN, EVAL), _shifting,
               make_weights=_uniform(0.1, 2.0))


def _steps():
    yield Spec(FAMILY, "train_without_update",
               lambda c: "A weighted batch-normalized step without update, then eval: y uses the weighted moments, "
                         f"running stats stay the initial ones; {_ignored(c)}.",
               _config(), [(6, 3)], (TRAIN_NO_UPDATE, EVAL), _shifting,
               make_weights=lambda rng, batch, index: rng.uniform(0.1, 2.0, size=batch) if index == 0 else None)
    yield Spec(FAMILY, "weights_on_some_steps",
               lambda c: "Weighted, unweighted, weighted training steps, then eval: a step without weights uses plain "
                         "moments (weights must not persist from the previous step); "
                         f"{_ignored(c, 'running_mean')}.",
               _config(), [(6, 3)], (TRAIN, TRAIN, TRAIN, EVAL), _shifting,
               make_weights=lambda rng, batch, index: rng.uniform(0.1, 2.0, size=batch) if index in (0, 2) else None)


def specs():
    yield from _weights()
    yield from _layouts()
    yield from _steps()
