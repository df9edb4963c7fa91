"""ghost: virtual (ghost) batches -- statistics per sub-batch of virtual_batch_size samples.

The canonical split is contiguous (Hoffer et al. 2017; composer's GhostBatchNorm chunks the
batch); tf_keras' virtual_batch_size reshapes to [V, B / V, ...] and so groups every
(B / V)-th sample ("interleaved"). Inputs drift with the sample index, so the two splits give
visibly different ghost moments. One running update per step folds in the mean of the ghost
moments (tf_keras). Each description quotes how far a specific mistake lands.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..caseformat.model import Config, RunningStats
from .spec import EVAL, TRAIN, TRAIN_NO_UPDATE, Spec, gap

FAMILY = "ghost"


def _drifting(rng, shape):
    """N(0, 1) plus 0.6 per sample index along axis 0, so neighbours resemble each other."""
    drift = 0.6 * np.arange(shape[0]).reshape([-1] + [1] * (len(shape) - 1))
    return rng.normal(0.0, 1.0, size=shape) + drift


def _config(size, split="contiguous", variance="biased", axis=1, **extra) -> Config:
    return Config(channel_axis=axis, running_stats=RunningStats(decay=0.9, variance=variance),
                  virtual_batch_size=size, ghost_split=split, **extra)


def _other_split(case) -> Config:
    other = "interleaved" if case.config.ghost_split == "contiguous" else "contiguous"
    return replace(case.config, ghost_split=other)


def _plain(case) -> Config:
    return replace(case.config, virtual_batch_size=None)


def _split_text(case) -> str:
    other = _other_split(case)
    return (f"the {other.ghost_split} split gives y off by up to {gap(case, config=other):.3g}, "
            f"whole-batch statistics by up to {gap(case, config=_plain(case)):.3g}")


def _first_step_updating(case) -> list:
    return [replace(case.steps[0], update_running_stats=True), *case.steps[1:]]


def _splits():
    for size, split, shape, axis in ((2, "contiguous", (8, 3), 1), (4, "contiguous", (8, 3), 1),
                                     (2, "interleaved", (8, 3), 1), (4, "interleaved", (12, 2, 2, 3), 3),
                                     (3, "contiguous", (6, 2, 2, 2), 1)):
        suffix = "" if len(shape) == 2 else ("_nhwc" if axis == len(shape) - 1 else "_nchw")
        rule = ("samples [gV, (g+1)V)" if split == "contiguous" else
                f"samples g, g+{shape[0] // size}, ... (tf_keras' reshape to [V, B/V, ...])")
        yield Spec(FAMILY, f"{split}_vbs{size}_b{shape[0]}{suffix}",
                   lambda c, r=rule, s=size, b=shape[0], lay=suffix[1:].upper(): (
                       f"Ghost batches of {s} from a batch of {b}{' (' + lay + ')' if lay else ''}, split "
                       f"{c.config.ghost_split} ({r}); each is normalized with its own biased moments; "
                       f"{_split_text(c)}."),
                   _config(size, split, axis=axis), [shape], (TRAIN, TRAIN, EVAL), _drifting)


def _sizes():
    yield Spec(FAMILY, "vbs_equals_batch",
               lambda c: "virtual_batch_size = batch size (6): one ghost batch, identical to plain batch norm; "
                         "reading the knob as the NUMBER of ghost batches (6 groups of one sample, variance 0) gives "
                         f"y off by up to {gap(c, config=replace(c.config, virtual_batch_size=1)):.3g}.",
               _config(6), [(6, 3)], (TRAIN, TRAIN, EVAL), _drifting)
    yield Spec(FAMILY, "vbs1_rank4_per_sample",
               lambda c: "Ghost batches of ONE sample of a 3x3 NCHW map: each sample is normalized over its own "
                         "H x W (like instance norm) and the Bessel factor is 9/8 (one ghost batch), not 27/26; "
                         f"whole-batch statistics give y off by up to {gap(c, config=_plain(c)):.3g}.",
               _config(1, variance="bessel"), [(3, 2, 3, 3)], (TRAIN, TRAIN, EVAL), _drifting)
    yield Spec(FAMILY, "bessel_per_ghost_batch",
               "Running variance kind 'bessel' with ghost batches of 3 from 6 samples: the update adds the mean "
               "ghost variance times 3/2 (elements per ghost batch); the whole-batch factor 6/5 makes each "
               "increment 20% smaller.",
               _config(3, variance="bessel"), [(6, 3)], (TRAIN, TRAIN, TRAIN, EVAL), _drifting)
    yield Spec(FAMILY, "running_update_within_ghost_variance",
               lambda c: "Two contiguous ghost batches of 4 whose means differ by about 2.4: the running variance "
                         "folds in the MEAN of the ghost variances (within-group spread only), not the whole-batch "
                         "variance, which is off by up to "
                         f"{gap(c, 'running_var', config=_plain(c)):.3g} in running_var.",
               _config(4), [(8, 3)], (TRAIN, TRAIN, TRAIN, EVAL), _drifting)


def _whole_batch_bessel_gap(case) -> str:
    """running_var's distance to an update whose Bessel factor uses the whole batch's N.

    The EMA is linear in its increments and the Bessel part of each is (factor - 1) times the mean
    ghost variance, so that distance is the biased kind's times 1 - (m - 1) / (n - 1)."""
    from ..reference import oracle

    m = case.config.virtual_batch_size * case.steps[0].x[0].size // case.channels
    n = case.steps[0].x.shape[0] * m // case.config.virtual_batch_size
    biased = oracle.run_steps(case.config.with_running(variance="biased"), case.initial_state, case.steps)
    far = max(float(np.abs(b["running_var"] - s.expected["running_var"]).max()) for b, s in zip(biased, case.steps))
    return (f"Bessel factor {m}/{m - 1} (elements per channel of one ghost batch), not {n}/{n - 1} of the whole "
            f"batch, which puts running_var off by up to {far * (1 - (m - 1) / (n - 1)):.3g}")


def _bessel_ghosts():
    for size, split, shape, axis in ((2, "interleaved", (8, 2, 2, 3), 3), (4, "contiguous", (8, 2, 3), 1)):
        yield Spec(FAMILY, f"bessel_{split}_vbs{size}_b{shape[0]}_rank{len(shape)}",
                   lambda c, s=size, sp=split: (f"Ghost batches of {s} ({sp}) with a Bessel running variance, "
                                                f"then eval: {_whole_batch_bessel_gap(c)}."),
                   _config(size, split, variance="bessel", axis=axis), [shape], (TRAIN, TRAIN, EVAL), _drifting)


def _steps():
    yield Spec(FAMILY, "train_without_update",
               lambda c: "A ghost-normalized step without update, then eval: running stats stay the initial ones; "
                         "updating anyway moves them by up to "
                         f"{gap(c, 'running_mean', steps=_first_step_updating(c)):.3g}.",
               _config(2), [(8, 3)], (TRAIN_NO_UPDATE, EVAL), _drifting)
    yield Spec(FAMILY, "eval_batch_not_divisible",
               "Ghost batches of 2 in training, then an eval batch of 5 samples: inference uses the running "
               "statistics, so the virtual batch size need not divide an eval batch (tf_keras reshapes to "
               "[-1, 1] there); an implementation that splits or rejects it fails.",
               _config(2), [(4, 3), (4, 3), (5, 3)], (TRAIN, TRAIN, EVAL), _drifting)
    yield Spec(FAMILY, "contiguous_vbs2_rank3_float64",
               lambda c: f"Ghost batches of 2 from 8 samples of a float64 (N, C, L) input; {_split_text(c)}.",
               _config(2, input_dtype="float64", param_dtype="float64"), [(8, 2, 4)], (TRAIN, TRAIN, EVAL),
               _drifting)


def specs():
    yield from _splits()
    yield from _sizes()
    yield from _steps()
    yield from _bessel_ghosts()
