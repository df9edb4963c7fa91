"""epsilon: where epsilon goes and how large it is, on channels whose variance is near eps.

Channel c of the input has standard deviation ``_STDS[c]`` (variance 1e-10 ... 1), so eps placed
inside the sqrt, outside it, or as a floor give answers that differ by far more than tolerance.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..caseformat.model import Config
from .spec import EVAL, TRAIN, Spec, gap

FAMILY = "epsilon"
_STDS = np.array([1e-5, 1e-4, 10 ** -2.5, 1e-2, 1e-1, 1.0])


def _spread(rng, shape):
    """Per-channel spread over six decades (channels on axis 1)."""
    return rng.normal(0.5, 1.0, size=shape) * _STDS.reshape(1, -1, *([1] * (len(shape) - 2)))


def _spread_last(rng, shape):
    """As :func:`_spread`, channels on the last axis."""
    return rng.normal(0.5, 1.0, size=shape) * _STDS


def _tiny_running():
    """State makers for eval: running means N(0, 0.01^2), running variances 1e-12 ... 1e-2 (log-spaced)."""
    return dict(running_mean=lambda r, c: r.normal(0.0, 0.01, c), running_var=lambda r, c: np.logspace(-12, -2, c))


def _inside_gap(case) -> str:
    """How far eps inside the square root (the mode ignored) lands from the case's placement."""
    return f"{gap(case, config=replace(case.config, epsilon_mode='add_inside_sqrt')):.3g}"


def _unfloored_gap(case) -> str:
    """How far the given eps without the floor lands from the case."""
    return f"{gap(case, config=replace(case.config, epsilon_floor=0.0)):.3g}"


def _eps_name(eps: float) -> str:
    return "0" if eps == 0 else f"{eps:.4g}".replace("e-0", "e-").replace("e+0", "e+")


def _values():
    for eps in (0.0, 1e-8, 1e-5, 1.001e-5, 1e-3, 1e-2, 1.0):
        yield Spec(FAMILY, f"eps_{_eps_name(eps)}_train",
                   f"epsilon = {eps!r} inside the sqrt on channels with variance 1e-10 ... 1: channels with "
                   f"variance below eps are shrunk towards beta; an implementation that ignores the given "
                   f"eps (using its default 1e-5 or 1e-3) or floors it at 1.001e-5 is off on those channels.",
                   Config(channel_axis=1, epsilon=eps, param_dtype="float64", input_dtype="float64"),
                   [(16, 6)], (TRAIN,), _spread)
    for dtype in ("float32",):
        yield Spec(FAMILY, f"eps_1e-3_{dtype}_train",
                   "epsilon = 1e-3 (the Keras default) in float32 with variance near eps: using 1e-5 "
                   "instead (the torch default) changes channels with variance <= 1e-3 by up to 30x.",
                   Config(channel_axis=1, epsilon=1e-3), [(16, 6)], (TRAIN,), _spread)


def _placements():
    for mode, text in (("add_outside_sqrt", "1/(sqrt(var) + eps)"), ("max_inside_sqrt", "1/sqrt(max(var, eps))")):
        for eps in (1e-5, 1e-3):
            yield Spec(FAMILY, f"{mode}_eps_{_eps_name(eps)}_train",
                       f"Epsilon placed as {text} (eps = {eps!r}); on channels with variance near eps this "
                       f"differs from 1/sqrt(var + eps) by up to 2x (a placement bug shows as that ratio).",
                       Config(channel_axis=1, epsilon=eps, epsilon_mode=mode, input_dtype="float64",
                              param_dtype="float64"), [(16, 6)], (TRAIN,), _spread)
    yield Spec(FAMILY, "floor_1e-5_eps_1e-8_train",
               "epsilon 1e-8 with a floor of 1e-5 (effective eps = max(eps, 1e-5), as old cuDNN paths did): "
               "channels with variance 1e-10 ... 1e-6 get 1/sqrt(var + 1e-5), not 1/sqrt(var + 1e-8).",
               Config(channel_axis=1, epsilon=1e-8, epsilon_floor=1e-5, input_dtype="float64",
                      param_dtype="float64"), [(16, 6)], (TRAIN,), _spread)
    yield Spec(FAMILY, "floor_1.001e-5_eps_1e-5_train",
               "epsilon 1e-5 with the 1.001e-5 floor (TF fused BN's old minimum): differs from plain 1e-5 "
               "only by 0.05% on the smallest-variance channels, but more than the float64 tolerance.",
               Config(channel_axis=1, epsilon=1e-5, epsilon_floor=1.001e-5, input_dtype="float64",
                      param_dtype="float64"), [(16, 6)], (TRAIN,), _spread)


def _placements_elsewhere():
    """The placements in eval (running variances 1e-12 ... 1e-2) and in float32 NHWC training."""
    for mode, text in (("add_outside_sqrt", "1/(sqrt(var) + eps)"), ("max_inside_sqrt", "1/sqrt(max(var, eps))")):
        yield Spec(FAMILY, f"{mode}_eps_1e-3_eval",
                   lambda c, t=text: f"Eval mode with running variances 1e-12 ... 1e-2 and eps = 1e-3 placed as {t}: "
                                     f"the running variance is placed like a batch variance; eps inside the square "
                                     f"root instead puts y off by up to {_inside_gap(c)}.",
                   Config(channel_axis=1, epsilon=1e-3, epsilon_mode=mode), [(5, 6, 2)], (EVAL,),
                   lambda rng, shape: rng.normal(0.0, 0.01, size=shape), **_tiny_running())
        yield Spec(FAMILY, f"{mode}_eps_1e-5_nhwc_float32_train",
                   lambda c, t=text: f"float32 NHWC input {list(c.steps[0].x.shape)} (channel variances 1e-10 ... 1) "
                                     f"with eps = 1e-5 placed as {t}: eps inside the square root instead puts y off "
                                     f"by up to {_inside_gap(c)}.",
                   Config(channel_axis=3, epsilon=1e-5, epsilon_mode=mode), [(4, 3, 3, 6)], (TRAIN,), _spread_last)


def _floors():
    """Epsilon floors below which eps is raised (cuDNN's 1e-5, TF fused BN's 1.001e-5), in eval and in
    float32 training: the floor, not the given eps, decides channels whose variance is below it."""
    for eps, floor in ((1e-6, 1.001e-5), (0.0, 1e-5)):
        dtype = "float32" if eps else "float64"
        yield Spec(FAMILY, f"floor_{_eps_name(floor)}_eps_{_eps_name(eps)}_nhwc_{dtype}_train",
                   lambda c, e=eps, f=floor, d=dtype: (
                       f"{d} NHWC input (channel variances 1e-10 ... 1), eps = {e!r} raised to the floor {f!r}: "
                       f"channels with variance below the floor get 1/sqrt(var + {f!r}); using eps = {e!r} as given "
                       f"puts y off by up to {_unfloored_gap(c)}."),
                   Config(channel_axis=3, epsilon=eps, epsilon_floor=floor, input_dtype=dtype, param_dtype=dtype),
                   [(4, 3, 3, 6)], (TRAIN,), _spread_last)
    for eps, floor, shape in ((1e-8, 1e-5, (5, 6, 2)), (0.0, 1.001e-5, (3, 6, 2, 2)), (1e-6, 1.001e-5, (2, 6, 2, 2, 2)),
                              (1e-5, 1.001e-5, (3, 6, 2, 2))):
        yield Spec(FAMILY, f"floor_{_eps_name(floor)}_eps_{_eps_name(eps)}_eval_rank{len(shape)}",
                   lambda c, e=eps, f=floor: (
                       f"Eval mode on a rank-{c.steps[0].x.ndim} input with running variances 1e-12 ... 1e-2, eps = "
                       f"{e!r} raised to the floor {f!r}: the floor also applies to the running variance; using eps "
                       f"= {e!r} as given puts y off by up to {_unfloored_gap(c)}."),
                   Config(channel_axis=1, epsilon=eps, epsilon_floor=floor), [shape], (EVAL,),
                   lambda rng, shape: rng.normal(0.0, 0.01, size=shape), **_tiny_running())


def _eval_tiny_variance():
    for eps in (1e-5, 1e-3, 0.0):
        yield Spec(FAMILY, f"eval_tiny_running_var_eps_{_eps_name(eps)}",
                   f"Eval mode with running variances 1e-12 ... 1e-2 and eps = {eps!r}: the denominator is "
                   f"dominated by eps, so outputs are large but finite"
                   f"{'' if eps else ' (eps 0: up to 1e6 times the input offset)'}; an implementation "
                   f"using another eps, or batch statistics, is off by orders of magnitude.",
                   Config(channel_axis=1, epsilon=eps), [(5, 6, 2)], (EVAL,),
                   lambda rng, shape: rng.normal(0.0, 0.01, size=shape),
                   running_mean=lambda r, c: r.normal(0.0, 0.01, c),
                   running_var=lambda r, c: np.logspace(-12, -2, c))


def specs():
    yield from _values()
    yield from _placements()
    yield from _eval_tiny_variance()
    yield from _placements_elsewhere()
    yield from _floors()
