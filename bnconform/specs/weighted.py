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
from ..reference.oracle import broadcast, normalize, reduction_axes
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


def _unbroadcast_gap(case) -> float:
    """How far y lands when the weighted sums are divided by sum(w) over the samples only (weights not
    broadcast over the spatial positions), each weighted batch-normalized step on its own."""
    axis, worst = case.config.channel_axis, 0.0
    for step in case.steps:
        if not step.is_training or step.sample_weights is None:
            continue
        x = step.x.astype(np.float64)
        axes = reduction_axes(x.ndim, axis)
        w = np.broadcast_to(step.sample_weights.astype(np.float64).reshape([-1] + [1] * (x.ndim - 1)), x.shape)
        total = step.sample_weights.astype(np.float64).sum()
        mean = (w * x).sum(axis=axes) / total
        centered = x - broadcast(mean, x.ndim, axis)
        var = (w * centered * centered).sum(axis=axes) / total
        y = normalize(x, mean, var, case.initial_state, case.config)
        worst = max(worst, float(np.abs(y - step.expected["y"].astype(np.float64)).max()))
    return worst


def _spatial_text(case) -> str:
    x = case.steps[0].x
    positions = x.size // x.shape[0] // x.shape[case.config.channel_axis]
    return (f"sum(w) runs over the batch and the {positions} spatial positions of each sample, so dividing by the "
            f"sample weights alone scales the mean by {positions} and puts y off by up to {_unbroadcast_gap(case):.3g}")


def _spatial():
    """Weights broadcast over the spatial positions at every rank and channel position, dtype and step kind."""
    outliers = _outliers_at(1)
    for name, what, config, shape, steps, make_x, weights in (
            ("rank5_ncdhw", "Weights U(0.2, 3) on a rank-5 NCDHW input", _config(), (3, 2, 2, 2, 2),
             (TRAIN, TRAIN, EVAL), _shifting, _uniform(0.2, 3.0)),
            ("rank5_ndhwc", "Weights U(0.2, 3) on a rank-5 NDHWC input", _config(axis=4), (3, 2, 2, 2, 3),
             (TRAIN, TRAIN, EVAL), _shifting, _uniform(0.2, 3.0)),
            ("rank3_nlc", "Weights U(0.2, 3) on a rank-3 NLC (channels-last sequence) input", _config(axis=2),
             (4, 5, 2), (TRAIN, TRAIN, EVAL), _shifting, _uniform(0.2, 3.0)),
            ("rank4_nhwc_float64", "float64 weights U(0.1, 2) on an NHWC input", _config(
                axis=3, input_dtype="float64", param_dtype="float64"), (3, 3, 3, 2), (TRAIN, TRAIN, EVAL), _shifting,
             _uniform(0.1, 2.0)),
            ("rank4_nhwc_float16", "float16 input (float32 parameters) with weights U(0.2, 3) on an NHWC map",
             _config(axis=3, input_dtype="float16"), (3, 2, 3, 2), (TRAIN, TRAIN, EVAL), _shifting,
             _uniform(0.2, 3.0)),
            ("rank4_nchw_integer_weights", "Integer weights 1, 2, 3 (frequency weights) on an NCHW map", _config(),
             (3, 2, 2, 3), (TRAIN, TRAIN, EVAL), _shifting, _fixed(1, 2, 3)),
            ("rank4_nchw_train_without_update", "A weighted batch-normalized NCHW step without update, then eval",
             _config(), (3, 2, 3, 2), (TRAIN_NO_UPDATE, EVAL), _shifting,
             lambda rng, batch, index: rng.uniform(0.2, 3.0, size=batch) if index == 0 else None),
            ("rank3_ncl_zero_weight_outliers", "Weights 1, 0, 1, 1 on an NCL input whose sample 1 holds outliers "
             "(+40), kept out of the moments", _config(), (4, 2, 5), (TRAIN, TRAIN, EVAL), outliers,
             _fixed(1, 0, 1, 1))):
        yield Spec(FAMILY, name, lambda c, w=what: f"{w}: {_spatial_text(c)}; {_ignored(c)}.", config, [shape], steps,
                   make_x, make_weights=weights)


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
    yield from _spatial()
