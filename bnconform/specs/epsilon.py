"""epsilon: where epsilon goes and how large it is, on channels whose variance is near eps.

Channel c of the input has standard deviation ``_STDS[c]`` (variance 1e-10 ... 1), so eps placed
inside the sqrt, outside it, or as a floor give answers that differ by far more than tolerance.
"""

from __future__ import annotations

import numpy as np

from ..caseformat.model import Config
from .spec import EVAL, TRAIN, Spec

FAMILY = "epsilon"
_STDS = np.array([1e-5, 1e-4, 10 ** -2.5, 1e-2, 1e-1, 1.0])


def _spread(rng, shape):
    """Per-channel spread over six decades (channels on axis 1)."""
    return rng.normal(0.5, 1.0, size=shape) * _STDS.reshape(1, -1, *([1] * (len(shape) - 2)))


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
