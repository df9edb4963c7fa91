"""Shared helpers of the JAX-family adapters (flax.linen, flax.nnx, haiku, equinox).

Nothing here imports JAX at module import time; :func:`load_jax` imports it once, with 64-bit
mode on so that float64 cases really run in float64 (JAX silently computes in float32
otherwise). The adapters also ask for ``JAX_ENABLE_X64=1`` in their process ``environment``.

Performance: XLA compiles one program per input shape (tens to hundreds of ms on CPU), so each
adapter keeps ONE jitted step function per set of structural knobs (:class:`JitCache`) and
passes everything that can be traced (parameters, running statistics, decay, epsilon, the
training flag) as arguments: a later case with the same input shape reuses the compiled program.
Decay and epsilon are passed as Python floats, which JAX traces as weakly typed scalars, so the
arithmetic is the same as with the literal constant (the framework casts it to the array dtype).
"""

from __future__ import annotations

import functools
import os
from typing import Callable

import numpy as np

from ...dtypes import numpy_dtype
from ...model import Case
from ..base import Adapter

X64_ENVIRONMENT = {"JAX_ENABLE_X64": "1"}


class JaxAdapter(Adapter):
    """What every JAX-library adapter shares: the jax extra, 64-bit mode, CPU plus any GPU."""

    extra = "jax"
    device_kinds = ("cpu", "cuda")
    environment = X64_ENVIRONMENT

    def devices(self):
        return jax_devices()


@functools.lru_cache(maxsize=None)
def load_jax():
    """Import jax once, in 64-bit mode (float64 cases need it)."""
    os.environ.setdefault("JAX_ENABLE_X64", "1")
    import jax

    jax.config.update("jax_enable_x64", True)
    return jax


def jax_devices() -> list[str]:
    """["cpu"], plus "cuda" when JAX sees a GPU (jax.devices('gpu') raises when it does not)."""
    jax = load_jax()
    try:
        return ["cpu", "cuda"] if jax.devices("gpu") else ["cpu"]
    except RuntimeError:
        return ["cpu"]


def jax_device(kind: str):
    """The first JAX device of a canonical device kind ("cpu" or "cuda")."""
    jax = load_jax()
    return jax.devices("gpu" if kind == "cuda" else "cpu")[0]


def put(array: np.ndarray, dtype_name: str, device):
    """A NumPy array converted to a canonical dtype (bfloat16 via ml_dtypes) on a JAX device."""
    jax = load_jax()
    return jax.device_put(np.asarray(array, dtype=numpy_dtype(dtype_name)), device)


def put_state(case: Case, device) -> dict:
    """gamma, beta, running_mean, running_var of the case, in the param dtype, on the device."""
    state, dtype = case.initial_state, case.config.param_dtype
    return {name: put(getattr(state, name), dtype, device)
            for name in ("gamma", "beta", "running_mean", "running_var")}


def to_numpy(array) -> np.ndarray:
    """What the framework computed, as a NumPy array (bfloat16 stays bfloat16)."""
    return np.asarray(array)


class JitCache:
    """jax.jit-compiled functions keyed by structural knobs; jit itself caches per shape/dtype.

    ``hits`` counts lookups that found a function already built (the tests read it).
    """

    def __init__(self, build: Callable[..., Callable]):
        self._build = build
        self._functions: dict[tuple, Callable] = {}
        self.hits = 0

    def get(self, *key) -> Callable:
        if key in self._functions:
            self.hits += 1
            return self._functions[key]
        function = load_jax().jit(self._build(*key))
        self._functions[key] = function
        return function

    def __len__(self) -> int:
        return len(self._functions)


def common_unsupported(case: Case, api: str) -> str | None:
    """Reasons shared by every JAX-family BN layer: eps inside sqrt, a fixed EMA, no schedule."""
    config, rs = case.config, case.config.running_stats
    if config.epsilon_mode != "add_inside_sqrt":
        return (f"{api} adds epsilon inside the square root only (rsqrt(var + eps)); "
                f"{config.epsilon_mode} cannot be expressed")
    if rs.rule == "cumulative":
        return f"{api} has no cumulative-average option (momentum is a fixed EMA decay)"
    if rs.num_updates_schedule:
        return f"{api} has no num_updates decay schedule (the decay is a constant)"
    return None


def updates_with(case: Case, min_count: int = 1) -> bool:
    """True if some step updates the running statistics from a batch of at least ``min_count``."""
    return any(step.update_running_stats and n >= min_count
               for step, n in zip(case.steps, case.reduce_counts()))


def bessel_matters(case: Case) -> bool:
    """The case asks for a Bessel-corrected running variance and that changes a result.

    The factor N / (N - 1) is 1 for N == 1 and a decay of 1 never folds the batch in.
    """
    rs = case.config.running_stats
    return rs.variance == "bessel" and rs.decay != 1.0 and updates_with(case, min_count=2)


def updates_outside_training(case: Case) -> bool:
    """Some step updates the running statistics while normalizing with them (eval + update)."""
    return any(step.update_running_stats and not step.is_training for step in case.steps)


def flax_unsupported(case: Case, api: str, stats_name: str) -> str | None:
    """Why a flax BatchNorm (linen or nnx) cannot express the case, or None.

    Both keep a plain EMA of their batch statistics, updated only in training mode.
    """
    reason = common_unsupported(case, api)
    if reason:
        return reason
    if case.config.running_stats.zero_debias:
        return f"{api} has no zero-debiasing option (a plain EMA of {stats_name})"
    if updates_outside_training(case):
        return f"{api} updates {stats_name} only when normalizing with batch statistics"
    return None


def empty_batch_update(case: Case, device: str = "") -> bool:
    """Some step updates the running statistics from an empty batch (N == 0)."""
    return any(step.update_running_stats and n == 0 for step, n in zip(case.steps, case.reduce_counts()))


def case_in(*case_ids: str) -> Callable[[Case, str], bool]:
    """A deviation selector for the named cases (numeric findings that depend on the data)."""
    return lambda case, device: case.id in case_ids
