"""formulas: the forward pass itself, in training (batch statistics) and eval (running) mode.

Covers ranks 2-5, channel axis first and last (and in the middle), gamma/beta on and off,
negative and zero gamma, input scales 1e-3 ... 1e3, and float64/float32/float16/bfloat16 inputs
(half inputs with float32 parameters, as frameworks keep them), including half batches of a
conv layer's size (N = 1024, 2048 per channel) with a post-activation offset, where moments summed
in the half dtype move y beyond its tolerance, and half inputs with parameters of the same half
dtype (a model cast with .half()), whose moments must still be kept in float32.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..caseformat.dtypes import quantize
from ..caseformat.model import Config
from ..reference.oracle import normalize, run_steps
from .spec import EVAL, TRAIN, TRAIN_NO_UPDATE, Spec, fixed, gap, normal

FAMILY = "formulas"

# (rank, layout name, shape, channel axis)
_LAYOUTS = [
    (2, "nc", (8, 3), 1),
    (3, "ncl", (4, 3, 5), 1), (3, "nlc", (4, 5, 3), 2),
    (4, "nchw", (3, 4, 3, 2), 1), (4, "nhwc", (3, 3, 2, 4), 3),
    (5, "ncdhw", (2, 3, 2, 3, 2), 1), (5, "ndhwc", (2, 2, 3, 2, 3), 4),
]

_MODE_TEXT = {
    "train": ("normalizes with the biased batch moments", "an implementation using the unbiased "
              "variance to normalize is off by sqrt(N/(N-1))"),
    "eval": ("normalizes with the given running statistics", "one that uses batch statistics in "
             "eval gets outputs with per-channel mean 0 instead of (mu_B - mu_run)/sigma_run"),
}


def _mode_steps(mode):
    return (TRAIN,) if mode == "train" else (EVAL,)


def _layouts():
    for rank, layout, shape, axis in _LAYOUTS:
        for mode in ("train", "eval"):
            what, wrong = _MODE_TEXT[mode]
            yield Spec(FAMILY, f"rank{rank}_{layout}_{mode}",
                       f"Rank-{rank} input {list(shape)} with channels on axis {axis} ({layout}) {what}; "
                       f"reducing over the wrong axes gives per-position instead of per-channel statistics, "
                       f"and {wrong}.",
                       Config(channel_axis=axis), [shape], _mode_steps(mode), normal(0.7, 1.5))
    yield Spec(FAMILY, "rank4_channel_axis2_train",
               "Channels on axis 2 of a rank-4 input (neither first nor last): statistics reduce over "
               "axes 0, 1 and 3; code that assumes channels first or last reduces the wrong axes.",
               Config(channel_axis=2), [(3, 2, 4, 3)], (TRAIN,), normal(-0.4, 2.0))
    yield Spec(FAMILY, "rank2_channel_axis0_train",
               "Channels on axis 0 of a rank-2 input (C, N): statistics reduce over axis 1; an "
               "implementation that always reduces axis 0 normalizes across channels instead.",
               Config(channel_axis=0), [(3, 7)], (TRAIN,), normal(0.3, 1.2))


def _affine():
    for scale in (True, False):
        for center in (True, False):
            for mode in ("train", "eval"):
                tag = f"scale_{'on' if scale else 'off'}_center_{'on' if center else 'off'}_{mode}"
                yield Spec(FAMILY, tag,
                           f"gamma {'applied' if scale else 'off (scale=False)'} and beta "
                           f"{'applied' if center else 'off (center=False)'} in {mode} mode; the state holds "
                           f"gamma != 1 and beta != 0, so an implementation that "
                           f"{'drops' if scale else 'still applies'} gamma or "
                           f"{'drops' if center else 'still applies'} beta is off by those values.",
                           Config(channel_axis=1, scale=scale, center=center), [(4, 3, 2, 2)],
                           _mode_steps(mode), normal(0.5, 1.3))


def _flag_gaps(case) -> str:
    """How far applying the stored gamma / adding the stored beta despite the flag lands."""
    config, parts = case.config, []
    if not config.scale:
        parts.append(f"applying the stored gamma anyway puts y off by up to "
                     f"{gap(case, config=replace(config, scale=True)):.3g}")
    if not config.center:
        parts.append(f"adding the stored beta anyway puts y off by up to "
                     f"{gap(case, config=replace(config, center=True)):.3g}")
    return "; ".join(parts)


def _affine_elsewhere():
    """scale / center off at the other ranks, layouts and dtypes (the flags must reach every code path).
    The float16 batch is centred near 0 (N(-0.4, 2^2)): tf.nn.batch_normalization's float16 affine
    arithmetic (moments_findings) stays well inside y's bounds there, so the cell judges the flag alone."""
    for scale, center, layout, shape, axis, dtype, mode, make_x in (
            (False, False, "nhwc", (3, 3, 2, 4), 3, "float32", "eval", normal(0.5, 1.3)),
            (False, True, "ndhwc", (2, 2, 3, 2, 3), 4, "float16", "train", normal(-0.4, 2.0)),
            (True, False, "nlc", (4, 5, 3), 2, "bfloat16", "train", normal(0.5, 1.3)),
            (False, False, "nc", (8, 3), 1, "float64", "train", normal(0.5, 1.3))):
        param = "float64" if dtype == "float64" else "float32"
        tag = f"scale_{'on' if scale else 'off'}_center_{'on' if center else 'off'}_{layout}_{dtype}_{mode}"
        yield Spec(FAMILY, tag,
                   lambda c, lay=layout, d=dtype, m=mode: (
                       f"scale={c.config.scale}, center={c.config.center} on a rank-{c.steps[0].x.ndim} {lay} {d} "
                       f"input in {m} mode, with gamma != 1 and beta != 0 stored: {_flag_gaps(c)}."),
                   Config(channel_axis=axis, scale=scale, center=center, input_dtype=dtype, param_dtype=param),
                   [shape], _mode_steps(mode), make_x)


def _abs_gamma_gap(case) -> str:
    state = replace(case.initial_state, gamma=np.abs(case.initial_state.gamma))
    theirs = _run_from(case, state)
    return f"|gamma| in place of gamma puts y off by up to {theirs:.3g}"


def _run_from(case, state) -> float:
    """max |y difference| over the steps when the oracle starts from ``state`` instead."""
    ours = [s.expected["y"] for s in case.steps]
    theirs = [r["y"] for r in run_steps(case.config, state, list(case.steps))]
    return max(float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) for a, b in zip(ours, theirs))


def _gamma_elsewhere():
    """Negative gamma at the other ranks, layouts and dtypes (the sign must survive every code path)."""
    negative = lambda r, c: -r.uniform(0.5, 2.0, c)  # noqa: E731
    for name, shape, axis, dtype, param, mode, gamma in (
            ("gamma_negative_nhwc_float32_train", (3, 3, 2, 4), 3, "float32", "float32", "train", negative),
            ("gamma_negative_ncl_float16_train", (4, 3, 5), 1, "float16", "float32", "train", negative),
            ("gamma_negative_ncdhw_bfloat16_eval", (2, 3, 2, 3, 2), 1, "bfloat16", "float32", "eval", negative),
            ("gamma_mixed_sign_nchw_float64_train", (3, 4, 3, 2), 1, "float64", "float64", "train",
             fixed(-2.0, -0.5, 0.5, 1.5)),
            ("gamma_negative_nc_float16_params_train", (8, 3), 1, "float16", "float16", "train", negative)):
        yield Spec(FAMILY, name,
                   lambda c, m=mode: (
                       f"gamma {np.round(c.initial_state.gamma.astype(np.float64), 3).tolist()} on a rank-"
                       f"{c.steps[0].x.ndim} {c.config.input_dtype} input ({c.config.param_dtype} parameters, {m} "
                       f"mode): a negative gamma flips its channel's output; {_abs_gamma_gap(c)}."),
                   Config(channel_axis=axis, input_dtype=dtype, param_dtype=param), [shape], _mode_steps(mode),
                   normal(1.0, 2.0), gamma=gamma)


def _gamma_values():
    yield Spec(FAMILY, "gamma_negative_train",
               "Negative gamma flips each channel's output sign; an implementation taking |gamma| or "
               "folding gamma into a sqrt gets the sign (or NaN) wrong.",
               Config(channel_axis=1), [(6, 3)], (TRAIN,), normal(0.0, 1.0),
               gamma=lambda r, c: -r.uniform(0.5, 2.0, c))
    yield Spec(FAMILY, "gamma_zero_train",
               "gamma = 0 makes every output equal beta exactly; an implementation that divides by gamma "
               "or skips zero weights returns NaN or the normalized input.",
               Config(channel_axis=1), [(6, 3)], (TRAIN,), normal(0.0, 1.0),
               gamma=lambda r, c: [0.0] * c)
    yield Spec(FAMILY, "gamma_mixed_sign_eval",
               "gamma of mixed sign including 0 in eval mode; sign errors show up channel by channel.",
               Config(channel_axis=1), [(5, 4, 3)], (EVAL,), normal(0.2, 1.0),
               gamma=lambda r, c: [-1.5, 0.0, 0.75, 2.0][:c])


def _scales():
    for exponent in (-3, -1, 1, 3):
        scale = 10.0 ** exponent
        for mode in ("train", "eval"):
            yield Spec(FAMILY, f"input_scale_1e{exponent:+d}_{mode}",
                       f"Inputs of scale 1e{exponent} (mean 2e{exponent}, std 1e{exponent}) in {mode} mode: "
                       f"BN output is scale-free in training and scales with the input in eval; an "
                       f"absolute epsilon or tolerance baked in at 1e-5 distorts small scales.",
                       Config(channel_axis=1, epsilon=1e-5 if exponent > -3 else 1e-12),
                       [(6, 3, 4)], _mode_steps(mode), normal(2 * scale, scale),
                       running_mean=lambda r, c, s=scale: r.normal(2 * s, s, c),
                       running_var=lambda r, c, s=scale: r.uniform(0.5, 2.0, c) * s * s)


def _dtypes():
    for dtype, param in (("float64", "float64"), ("float16", "float32"), ("bfloat16", "float32")):
        for shape, layout, axis in (((8, 3), "nc", 1), ((2, 3, 4, 4), "nchw", 1), ((2, 4, 4, 3), "nhwc", 3)):
            for mode in ("train", "eval"):
                yield Spec(FAMILY, f"{dtype}_{layout}_{mode}",
                           f"{dtype} input with {param} parameters ({layout}, {mode}): x is quantized to "
                           f"{dtype}, the math should run in float32 or wider and y be rounded once to "
                           f"{dtype}; computing the moments in {dtype} loses digits beyond the tolerance.",
                           Config(channel_axis=axis, input_dtype=dtype, param_dtype=param),
                           [shape], _mode_steps(mode), normal(1.0, 2.0))


def _half_sum_gap(case) -> str:
    """How far y lands when the batch mean is summed in a running half-precision accumulator."""
    step, axis = case.steps[0], case.config.channel_axis
    values = np.moveaxis(step.x, axis, 0).reshape(case.channels, -1)
    total = np.zeros_like(values[:, 0])
    for column in values.T:  # every partial sum rounded to the half dtype
        total = total + column
    mean = total.astype(np.float64) / values.shape[1]
    y = normalize(step.x, mean, step.expected["batch_var"], case.initial_state, case.config)
    return (f"a {case.config.input_dtype} running sum of the mean alone puts y off by up to "
            f"{np.abs(y - step.expected['y']).max():.3g} (y tolerance about {step.tolerance['y']['atol']:.3g})")


def _half_batches():
    """Half inputs the size of a conv layer's batch, with the offset of post-activation features."""
    for dtype, shape, loc, scale, steps in (("float16", (32, 8, 8, 2), 3.0, 1.0, (TRAIN_NO_UPDATE,)),
                                            ("bfloat16", (16, 8, 8, 2), 4.0, 1.5, (TRAIN,))):
        n, updates = shape[0] * shape[1] * shape[2], steps[0][1]
        yield Spec(FAMILY, f"{dtype}_nhwc_n{n}_offset_{'train' if updates else 'batch_no_update'}",
                   lambda c, d=dtype, n=n, mode="a training step" if updates else "batch statistics, no update": (
                       f"{d} NHWC input {list(c.steps[0].x.shape)} with a post-activation offset ({mode}; "
                       f"N = {n} values per channel): the moments must be accumulated in float32 or wider; "
                       f"{_half_sum_gap(c)}."),
                   Config(channel_axis=3, input_dtype=dtype, param_dtype="float32"), [shape], steps,
                   normal(loc, scale))


def _half_batches_elsewhere():
    """The same at other ranks: a rank-5 float16 volume batch, a rank-3 bfloat16 sequence batch and a
    rank-2 float16 batch of 2048 samples (a dense layer's)."""
    for dtype, shape, axis, layout, loc, scale, steps in (
            ("float16", (16, 2, 4, 4, 4), 1, "ncdhw", 6.0, 1.0, (TRAIN,)),
            ("bfloat16", (32, 16, 2), 2, "nlc", 3.0, 1.0, (TRAIN_NO_UPDATE,)),
            ("float16", (2048, 2), 1, "nc", 3.0, 1.0, (TRAIN,))):
        n, updates = int(np.prod(shape)) // shape[axis], steps[0][1]
        yield Spec(FAMILY, f"{dtype}_{layout}_n{n}_offset_{'train' if updates else 'batch_no_update'}",
                   lambda c, d=dtype, lay=layout, n=n,
                   mode="a training step" if updates else "batch statistics, no update": (
                       f"{d} {lay.upper()} input {list(c.steps[0].x.shape)} with a post-activation offset ({mode}; "
                       f"N = {n} values per channel): the moments must be accumulated in float32 or wider; "
                       f"{_half_sum_gap(c)}."),
                   Config(channel_axis=axis, input_dtype=dtype, param_dtype="float32"), [shape], steps,
                   normal(loc, scale))


def _half_mean_gap(case) -> str:
    """How far y lands when the batch mean is rounded to the half dtype before normalizing."""
    step, dtype = case.steps[0], case.config.input_dtype
    mean = quantize(step.expected["batch_mean"], dtype).astype(np.float64)
    y = normalize(step.x, mean, step.expected["batch_var"], case.initial_state, case.config)
    return (f"a batch mean rounded to {dtype} before normalizing puts y off by up to "
            f"{np.abs(y - step.expected['y']).max():.3g} (y tolerance about {step.tolerance['y']['atol']:.3g})")


def _half_params():
    """Found by `bnconform fuzz` on torch (promoted): parameters in the input's half dtype, as after
    ``model.half()``; the batch moments must not be rounded to that dtype before normalizing."""
    for dtype in ("float16", "bfloat16"):
        yield Spec(FAMILY, f"{dtype}_params_offset_train",
                   lambda c, d=dtype: (
                       f"{d} input AND parameters (a model cast with .half() / .bfloat16()), x ~ N(20, 0.25^2) "
                       f"(a training step): the moments must still be computed and applied in float32; "
                       f"{_half_mean_gap(c)}."),
                   Config(channel_axis=1, input_dtype=dtype, param_dtype=dtype), [(6, 3)], (TRAIN,),
                   normal(20.0, 0.25))


def specs():
    yield from _layouts()
    yield from _affine()
    yield from _gamma_values()
    yield from _scales()
    yield from _dtypes()
    yield from _half_batches()
    yield from _half_params()
    yield from _affine_elsewhere()
    yield from _gamma_elsewhere()
    yield from _half_batches_elsewhere()
