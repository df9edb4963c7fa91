"""renorm: Batch Renormalization (Ioffe 2017) as tf_keras / tf.compat.v1 layers implement it.

y = gamma * ((x - mu_B) / sigma_B * r + d) + beta with r = clip(sigma_B / s_R, rmin, rmax) and
d = clip((mu_B - m_R) / s_R, -dmax, dmax) from the renorm statistics BEFORE the step's update.
The renorm statistics follow the renorm decay; inference uses running_mean and running_var,
where running_var = S^2 - eps and the running stddev S is an EMA of sqrt(v + eps). Renorm
stddevs below sqrt(eps) (down to 0) pin tf_keras' guard max(s_R, sqrt(eps)). Each
description quotes how far a specific mistake lands (computed by the oracle on that mistake).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..caseformat.model import Config, Renorm, RunningStats
from ..reference.oracle import normalize
from .spec import EVAL, TRAIN, TRAIN_NO_UPDATE, Spec, gap, normal

FAMILY = "renorm"
THREE_TRAIN_EVAL = (TRAIN, TRAIN, TRAIN, EVAL)


def _shifting(rng, shape):
    """Each call draws a batch with a new per-call mean and spread."""
    return rng.normal(rng.uniform(-2, 2), rng.uniform(0.5, 3.0), size=shape)


def _config(rmin=None, rmax=None, dmax=None, renorm_decay=0.9, decay=0.9, variance="biased", axis=1, epsilon=1e-3,
            **extra) -> Config:
    return Config(channel_axis=axis, epsilon=epsilon, running_stats=RunningStats(decay=decay, variance=variance),
                  renorm=Renorm(rmin, rmax, dmax, renorm_decay), **extra)


def _raw_corrections(case) -> tuple[np.ndarray, np.ndarray]:
    """Unclipped r and d of every batch-normalized step (rows), from the case's own expected values."""
    eps, state = case.config.effective_epsilon, case.initial_state
    mean, stddev = state.renorm_mean.astype(np.float64), state.renorm_stddev.astype(np.float64)
    rs, ds = [], []
    for step in case.steps:
        if step.is_training:
            reference = np.maximum(stddev, np.sqrt(eps))
            rs.append(np.sqrt(step.expected["batch_var"] + eps) / reference)
            ds.append((step.expected["batch_mean"] - mean) / reference)
        mean, stddev = step.expected["renorm_mean"], step.expected["renorm_stddev"]
    return np.array(rs), np.array(ds)


def _clip_counts(case) -> str:
    r, d = _raw_corrections(case)
    knobs = case.config.renorm
    low = (r < knobs.rmin).sum() if knobs.rmin is not None else 0
    high = (r > knobs.rmax).sum() if knobs.rmax is not None else 0
    far = (np.abs(d) > knobs.dmax).sum() if knobs.dmax is not None else 0
    return f"of {r.size} (step, channel) pairs, r is clipped below in {low}, above in {high}, d in {far}"


def _without_renorm(case) -> Config:
    return replace(case.config, renorm=None)


def _plain_gap(case, output: str = "y") -> float:
    """How far plain batch norm (renorm ignored) lands from the case in ``output``."""
    return gap(case, output, config=_without_renorm(case))


def _always_updating(case) -> list:
    return [replace(s, update_running_stats=True) if s.is_training else s for s in case.steps]


def _with_bounds(case, **bounds) -> Config:
    return replace(case.config, renorm=replace(case.config.renorm, **bounds))


def _clipping():
    yield Spec(FAMILY, "unclipped_3steps",
               lambda c: "Renorm without clipping: r = sigma_B / s_R and d = (mu_B - m_R) / s_R turn y into "
                         "gamma * (x - m_R) / s_R + beta, i.e. normalization by the renorm statistics from before "
                         f"each update; plain batch norm (renorm ignored) gives y off by up to {_plain_gap(c):.3g}.",
               _config(), [(6, 3)], THREE_TRAIN_EVAL, _shifting)
    yield Spec(FAMILY, "clipped_r_and_d",
               lambda c: "Renorm with rmin 2/3, rmax 1.5, dmax 0.5 and batches about 3x wider than s_R "
                         f"({_clip_counts(c)}); skipping the clipping moves y by up to "
                         f"{gap(c, config=_with_bounds(c, rmin=None, rmax=None, dmax=None)):.3g}.",
               _config(rmin=2 / 3, rmax=1.5, dmax=0.5), [(6, 3)], THREE_TRAIN_EVAL, _wide_offset)
    yield Spec(FAMILY, "identity_clip_running_stddev",
               lambda c: "rmin = rmax = 1 and dmax = 0 make the forward pass plain batch norm, but running_var is "
                         "S^2 - eps with S an EMA of sqrt(v_B + eps) (tf_keras moving_stddev); an EMA of the variance "
                         f"itself gives running_var off by up to {_plain_gap(c, 'running_var'):.3g}.",
               _config(rmin=1.0, rmax=1.0, dmax=0.0), [(6, 3)], THREE_TRAIN_EVAL, _shifting)
    yield Spec(FAMILY, "rmin_clip_narrow_batch",
               lambda c: "Batches narrower than s_R push r below rmin 0.8 (rmax 3, dmax 1; "
                         f"{_clip_counts(c)}); ignoring rmin (or clipping at the paper's 1/rmax = 1/3) "
                         "moves y by up to "
                         f"{gap(c, config=_with_bounds(c, rmin=None)):.3g}.",
               _config(rmin=0.8, rmax=3.0, dmax=1.0), [(6, 3)], THREE_TRAIN_EVAL,
               lambda rng, shape: rng.normal(0.0, 0.3, size=shape))


def _wide_offset(rng, shape):
    return rng.normal(2.0, 3.0, size=shape)


def _statistics():
    yield Spec(FAMILY, "renorm_decay_0.5_decay_0.99",
               lambda c: "Renorm statistics follow renorm decay 0.5 while the inference statistics follow decay 0.99; "
                         "updating the renorm statistics with 0.99 changes r, d and y of later steps by up to "
                         f"{gap(c, config=_with_bounds(c, decay=0.99)):.3g}.",
               _config(renorm_decay=0.5, decay=0.99), [(6, 3)], (TRAIN,) * 4 + (EVAL,), _shifting)
    yield Spec(FAMILY, "train_without_update",
               lambda c: "Batch-normalized steps without update use r, d from the current renorm statistics and "
                         "change no statistic; updating anyway moves later y by up to "
                         f"{gap(c, steps=_always_updating(c)):.3g}.",
               _config(rmax=2.0, dmax=1.0), [(6, 3)], (TRAIN_NO_UPDATE, TRAIN, TRAIN_NO_UPDATE, EVAL), _shifting)
    yield Spec(FAMILY, "renorm_stddev_below_sqrt_eps",
               lambda c: "Initial renorm stddev 1e-3 < sqrt(eps) = 0.0316: r and d divide by max(s_R, sqrt(eps)) "
                         f"(tf_keras' guard), so step 0 has r in [{_raw_corrections(c)[0][0].min():.3g}, "
                         f"{_raw_corrections(c)[0][0].max():.3g}] and no bound is hit ({_clip_counts(c)}); dividing "
                         "by s_R itself makes step-0 r and d 31.6x larger, past rmax 100 and dmax 100.",
               _config(rmax=100.0, dmax=100.0), [(6, 3)], (TRAIN, TRAIN, EVAL), _shifting,
               renorm_stddev=lambda rng, c: np.full(c, 1e-3))
    yield Spec(FAMILY, "bessel_running_stddev",
               lambda c: "Running variance kind 'bessel' (N = 4): the running stddev tracks sqrt(v_B * 4/3 + eps) "
                         "while s_R tracks sigma_B = sqrt(v_B + eps); the biased kind (tf_keras' only one) gives "
                         "running_var off by up to "
                         f"{gap(c, 'running_var', config=c.config.with_running(variance='biased')):.3g}.",
               _config(variance="bessel", rmax=3.0, dmax=2.0), [(4, 3)], THREE_TRAIN_EVAL, _shifting)


def _guards():
    """Renorm stddevs below sqrt(eps), where tf_keras' max(s_R, sqrt(eps)) guard decides r and d."""
    yield Spec(FAMILY, "renorm_stddev_zero_start",
               lambda c: "Renorm stddev starting at 0 (a zero-initialized moving stddev), no clipping, renorm decay "
                         "0.5 and decay 0.9: step 0 divides by max(0, sqrt(eps)) = 0.0316, so r = sigma_B / 0.0316 "
                         "and d = (mu_B - m_R) / 0.0316 are large but finite; without the guard they are Inf and y is "
                         "NaN or Inf.",
               _config(renorm_decay=0.5), [(6, 3)], THREE_TRAIN_EVAL, _shifting,
               renorm_stddev=lambda rng, c: np.zeros(c))
    yield Spec(FAMILY, "renorm_stddev_below_sqrt_eps_nhwc",
               lambda c: "NHWC input with renorm stddev 1e-3 < sqrt(eps) = 0.0316 (rmax 100, dmax 100, renorm decay "
                         f"0.99, decay 0.9; {_clip_counts(c)}): step 0's r and d divide by the guard 0.0316, not by "
                         "1e-3, which would make them 31.6x larger and clip them at the bounds.",
               _config(rmax=100.0, dmax=100.0, renorm_decay=0.99, axis=3), [(2, 2, 2, 3)], THREE_TRAIN_EVAL,
               _shifting, renorm_stddev=lambda rng, c: np.full(c, 1e-3))
    yield Spec(FAMILY, "renorm_stddev_below_sqrt_eps_float64",
               lambda c: "float64 with renorm stddevs 1e-4 ... 1e-2 (below sqrt(eps) = 0.0316 on every channel), "
                         f"rmax 1e3, dmax 1e3, renorm decay 0.7, decay 0.9; {_clip_counts(c)}): r and d divide by "
                         "the guard; dividing by s_R itself makes step 0's 3x to 300x larger.",
               _config(rmax=1e3, dmax=1e3, renorm_decay=0.7, input_dtype="float64", param_dtype="float64"), [(6, 3)],
               THREE_TRAIN_EVAL, _shifting, renorm_stddev=lambda rng, c: np.logspace(-4, -2, c))


def _unguarded_gap(case) -> float:
    """How far y lands when r and d divide by s_R itself (no max(s_R, sqrt(eps)) guard), each batch-normalized
    step from the renorm statistics the case expects before it."""
    eps, knobs, state = case.config.effective_epsilon, case.config.renorm, case.initial_state
    mean, stddev = state.renorm_mean.astype(np.float64), state.renorm_stddev.astype(np.float64)
    worst = 0.0
    for step in case.steps:
        if step.is_training:
            batch_mean, batch_var = step.expected["batch_mean"], step.expected["batch_var"]
            with np.errstate(all="ignore"):
                r, d = np.sqrt(batch_var + eps) / stddev, (batch_mean - mean) / stddev
            r = r if knobs.rmin is None else np.maximum(r, knobs.rmin)
            r = r if knobs.rmax is None else np.minimum(r, knobs.rmax)
            d = d if knobs.dmax is None else np.clip(d, -knobs.dmax, knobs.dmax)
            y = normalize(step.x, batch_mean, batch_var, state, case.config, (r, d))
            both = np.isfinite(y) & np.isfinite(step.expected["y"])
            worst = max(worst, float(np.abs(y[both] - step.expected["y"][both].astype(np.float64)).max(initial=0.0)))
        mean, stddev = step.expected["renorm_mean"], step.expected["renorm_stddev"]
    return worst


def _guard_text(case) -> str:
    """The guard's numbers in a case whose initial renorm stddev is below sqrt(eps)."""
    eps, stddev = case.config.effective_epsilon, case.initial_state.renorm_stddev.astype(np.float64)
    r, d = _raw_corrections(case)
    spread = f"{stddev.min():.3g}" if stddev.min() == stddev.max() else f"{stddev.min():.3g} ... {stddev.max():.3g}"
    return (f"s_R {spread} < sqrt(eps) = {np.sqrt(eps):.3g}, so step 0 divides by the "
            f"guard: unclipped r in [{r[0].min():.3g}, {r[0].max():.3g}], |d| <= {np.abs(d[0]).max():.3g} "
            f"({_clip_counts(case)}); dividing by s_R itself makes step 0's r and d up to "
            f"{np.sqrt(eps) / stddev.min():.3g}x larger and puts y off by up to {_unguarded_gap(case):.3g}")


def _guards_elsewhere():
    """The guard at other ranks, dtypes, epsilons and bounds, and on steps that do not update (the renorm
    statistics then stay below sqrt(eps) for every step)."""
    tiny = lambda value: (lambda rng, c: np.full(c, value))  # noqa: E731
    wide = dict(rmax=100.0, dmax=100.0)
    for name, what, config, shape, steps, make_x, stddev in (
            ("renorm_stddev_below_sqrt_eps_rank3_ncl", "Rank-3 NCL input, rmax 100, dmax 100",
             _config(**wide), (4, 3, 5), THREE_TRAIN_EVAL, _shifting, tiny(1e-3)),
            ("renorm_stddev_below_sqrt_eps_ncdhw", "Rank-5 NCDHW input, rmax 100, dmax 100, renorm decay 0.99",
             _config(renorm_decay=0.99, **wide), (2, 3, 2, 2, 2), THREE_TRAIN_EVAL, _shifting, tiny(1e-3)),
            ("renorm_stddev_below_sqrt_eps_narrow_batch_clipped",
             "Batches of std 0.03 (about sqrt(eps)) near a renorm mean N(0, 0.01^2), with tf_keras-style bounds "
             "rmin 1/3, rmax 3, dmax 5", _config(rmin=1 / 3, rmax=3.0, dmax=5.0), (6, 3), THREE_TRAIN_EVAL,
             normal(0.0, 0.03), tiny(1e-3)),
            ("renorm_stddev_below_sqrt_eps_no_update",
             "Batch-normalized steps without update (the renorm statistics stay below sqrt(eps) on every step), "
             "rmax 100, dmax 100", _config(**wide), (6, 3), (TRAIN_NO_UPDATE, TRAIN_NO_UPDATE, EVAL), _shifting,
             tiny(1e-3)),
            ("renorm_stddev_below_sqrt_eps_float16", "float16 input with float32 parameters, rmax 100, dmax 100",
             _config(input_dtype="float16", **wide), (8, 3), THREE_TRAIN_EVAL, _shifting, tiny(1e-3)),
            ("renorm_stddev_below_sqrt_eps_bfloat16_nhwc", "bfloat16 NHWC input with float32 parameters, rmax 100, "
             "dmax 100", _config(axis=3, input_dtype="bfloat16", **wide), (2, 2, 2, 3), THREE_TRAIN_EVAL, _shifting,
             tiny(1e-3)),
            ("renorm_stddev_below_sqrt_eps_eps_1e-5", "float64 with eps 1e-5 (the guard is 3.16e-3) and renorm "
             "stddevs 1e-5 ... 1e-3, rmax 1e4, dmax 1e4",
             _config(rmax=1e4, dmax=1e4, epsilon=1e-5, input_dtype="float64", param_dtype="float64"), (6, 3),
             THREE_TRAIN_EVAL, _shifting, lambda rng, c: np.logspace(-5, -3, c)),
            ("renorm_stddev_below_sqrt_eps_scale_center_off", "scale and center off (y = xhat * r + d), rmax 100, "
             "dmax 100", _config(scale=False, center=False, **wide), (6, 3), THREE_TRAIN_EVAL, _shifting, tiny(1e-3))):
        near = (lambda rng, c: rng.normal(0.0, 0.01, c)) if name.endswith("narrow_batch_clipped") else None
        yield Spec(FAMILY, name, lambda c, w=what: f"{w}: {_guard_text(c)}.", config, [shape], steps, make_x,
                   renorm_mean=near, renorm_stddev=stddev)


def _layouts():
    clip = dict(rmin=0.5, rmax=2.0, dmax=1.0)
    for name, axis, shape in (("rank4_nchw", 1, (2, 3, 2, 2)), ("rank4_nhwc", 3, (2, 2, 3, 3))):
        yield Spec(FAMILY, name,
                   lambda c, n=name: f"Renorm on a {n[-4:].upper()} input (rmin 0.5, rmax 2, dmax 1): moments, r and d "
                                     f"per channel over batch x H x W; plain batch norm gives y off by up to "
                                     f"{_plain_gap(c):.3g}.",
                   _config(axis=axis, **clip), [shape], THREE_TRAIN_EVAL, _shifting)
    yield Spec(FAMILY, "float64",
               lambda c: "Renorm in float64 (rmax 2, dmax 1): float64 frameworks must agree to ~1e-13; plain batch "
                         f"norm is off by up to {_plain_gap(c):.3g}.",
               _config(rmax=2.0, dmax=1.0, input_dtype="float64", param_dtype="float64"), [(6, 3)],
               THREE_TRAIN_EVAL, _shifting)
    yield Spec(FAMILY, "scale_center_off",
               lambda c: "Renorm with scale and center off: y = xhat * r + d exactly (gamma, beta stored but unused); "
                         "applying the stored gamma and beta moves y by up to "
                         f"{gap(c, config=replace(c.config, scale=True, center=True)):.3g}.",
               _config(rmax=2.0, dmax=1.0, scale=False, center=False), [(6, 3)], THREE_TRAIN_EVAL, _shifting)


def specs():
    yield from _clipping()
    yield from _statistics()
    yield from _layouts()
    yield from _guards()
    yield from _guards_elsewhere()
