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
Each case crosses the host/device boundary once each way (:func:`put_state`, :func:`put_inputs`,
:func:`fetch`): the steps run back to back on the device and are read after the last one.

Gradients: :func:`differentiated` wraps an adapter's pure step in ``jax.vjp`` with respect to the
parameters and x, the running statistics (and any counter) riding along as auxiliary outputs, so
dx, dgamma and dbeta are the VJP (cotangent dy) of the very call that produced y. Each adapter
keeps those programs in a second :class:`JitCache`, used only by steps that carry dy: forward-only
cases never trace or compile a backward pass. A differentiated program traces the step's own mode
alone (:func:`in_mode`): its forward-plus-backward then compiles in ~1.3 x the time of the two-mode
forward program for a training step and ~0.6 x for an inference one, where differentiating both
branches of the ``lax.cond`` cost ~2.3 x.

Devices: the JAX host starts with ``HOST_DEVICE_COUNT`` (8) CPU devices (``XLA_FLAGS`` in
``X64_ENVIRONMENT``, added to any flags the user set), so that replicated cases (``replica_sizes``)
run one replica per device (:mod:`.replicas`: placement, shard_map, the compiled-program caches).
Every other case runs on the first device of its kind, JAX's default, exactly as with one device.

Capabilities and deviations that several of these adapters share live here too:
``JAX_CAPABILITIES`` (each adapter narrows it), the selector of replicated training and the
empty-batch gradient finding; what only flax.linen and flax.nnx share is in :mod:`.flax_common`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from typing import Callable

import numpy as np

from ...caseformat.dtypes import numpy_dtype
from ...caseformat.model import Case
from ...judging.capabilities import Capabilities, replica_split
from ...judging.selectors import Selector, empty_batch_gamma_gradient, where
from ..base import Adapter, Deviation, Mismatches, Unsupported

# Host CPU devices JAX creates (XLA reads the flag when JAX starts its CPU backend): replicated cases
# run one replica per device (replicas.py); every other case runs on CPU 0, JAX's default device.
HOST_DEVICE_COUNT = 8
HOST_DEVICES_FLAG = "--xla_force_host_platform_device_count"


def with_host_devices(flags: str) -> str:
    """``flags`` (the user's XLA_FLAGS) plus the host device count, unless they already set one."""
    if HOST_DEVICES_FLAG in flags:
        return flags
    return f"{flags} {HOST_DEVICES_FLAG}={HOST_DEVICE_COUNT}".strip()


# The JAX family's host environment (the name predates the device flag; Keras 3 and the tests import
# it): 64-bit mode, HOST_DEVICE_COUNT CPU devices, and KERAS_BACKEND=jax, so Keras 3 on its jax backend
# declares the same environment and shares the JAX family's host process (jax imported once); flax,
# haiku and equinox never read KERAS_BACKEND.
X64_ENVIRONMENT = {"JAX_ENABLE_X64": "1", "KERAS_BACKEND": "jax",
                   "XLA_FLAGS": with_host_devices(os.environ.get("XLA_FLAGS", ""))}


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


def put_state(case: Case, device) -> dict:
    """gamma, beta, running_mean, running_var of the case, in the param dtype, on the device
    (one host-to-device transfer; bfloat16 via ml_dtypes)."""
    state, dtype = case.initial_state, numpy_dtype(case.config.param_dtype)
    return load_jax().device_put({name: np.asarray(getattr(state, name), dtype=dtype)
                                  for name in ("gamma", "beta", "running_mean", "running_var")}, device)


def put_inputs(case: Case, device) -> list:
    """Every step's (x, dy) in the input dtype on the device, in one host-to-device transfer (dy
    None on a step without an upstream gradient)."""
    dtype = numpy_dtype(case.config.input_dtype)
    return load_jax().device_put([(np.asarray(step.x, dtype=dtype), None if step.dy is None else
                                   np.asarray(step.dy, dtype=dtype)) for step in case.steps], device)


def in_mode(static: bool | None, training, train: Callable, infer: Callable, operand):
    """``lax.cond`` on the traced flag ``training`` (both modes in one program) when ``static`` is
    None; else only the branch ``static`` names, for the differentiated steps: their backward
    program then stays about the size of the two-mode forward one."""
    if static is None:
        return load_jax().lax.cond(training, train, infer, operand)
    return (train if static else infer)(operand)


def differentiated(step: Callable, x_at: int) -> Callable:
    """``step(params, ..., x, ...) -> (y, *rest)`` (params first, x at ``x_at``) as a function of
    the same arguments plus a trailing cotangent ``dy``, returning ``(y, *rest, dx, dparams)``:
    jax.vjp of that one call with respect to (params, x); ``rest`` (updated statistics, counters)
    are auxiliary outputs, so the running-statistics update is not differentiated. dy is cast to
    y's dtype (y is wider than x where flax promotes half inputs to float32 params: exact)."""
    jax = load_jax()

    def with_gradient(*arguments):
        *arguments, dy = arguments

        def of(params, x):
            called = list(arguments)
            called[0], called[x_at] = params, x
            y, *rest = step(*called)
            return y, rest

        y, pullback, rest = jax.vjp(of, arguments[0], arguments[x_at], has_aux=True)
        dparams, dx = pullback(dy.astype(y.dtype))
        return (y, *rest, dx, dparams)

    return with_gradient


def gradient_cache(build: Callable[..., Callable], x_at: int) -> "JitCache":
    """A JitCache of the :func:`differentiated` steps of ``build``, keyed by the forward key plus
    the step's mode (``build(*key, training)`` traces that mode alone)."""
    return JitCache(lambda *key: differentiated(build(*key), x_at))


def gradient_step(normalize_with: str) -> Selector:
    """Some step normalizing with ``normalize_with`` ("batch" / "running") carries dy, and the
    layer has a scale (so dgamma is an output)."""
    words = {"batch": "a training step", "running": "an inference step"}[normalize_with]
    return Selector(f"{words} with an upstream gradient dy and scale on", lambda case, device: case.config.scale and any(
        s.dy is not None and s.normalize_with == normalize_with for s in case.steps))


def gradient_outputs(step, config, dx, dgamma, dbeta) -> dict:
    """The gradient outputs of one step: none without dy; dgamma / dbeta only where scale / center
    is on (the layer has no such parameter otherwise)."""
    if step.dy is None:
        return {}
    found = {"dx": dx}
    if config.scale:
        found["dgamma"] = dgamma
    if config.center:
        found["dbeta"] = dbeta
    return found


def fetch(results: list[dict]) -> list[dict]:
    """Every step's outputs as NumPy, in one device-to-host transfer (after the last step ran)."""
    return load_jax().device_get(results)


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


# What every JAX-family BatchNorm expresses: eps inside the square root (rsqrt(var + eps)), a biased
# running variance (the variance it normalizes with), a constant EMA decay (no cumulative rule, no
# num_updates schedule), no zero-debias (haiku and equinox "batch" narrow that), and the running
# statistics updated only while normalizing with batch statistics; discarding the returned state
# expresses a training step without an update. Any rank, any channel axis, every dtype pair.
# Every one is a pure function that jax.vjp differentiates, in both modes, and synchronizes its
# statistics over a named axis (cross-replica BN on 2, 4 or 8 host devices: replicas.py); haiku and
# equinox, which have no mask, narrow the splits to equal ones.
JAX_CAPABILITIES = Capabilities(
    epsilon_modes=frozenset({"add_inside_sqrt"}), running_variance=frozenset({"biased"}),
    zero_debias=frozenset({False}), num_updates_schedule=frozenset({False}), running_rules=frozenset({"ema"}),
    step_kinds=frozenset({("batch", True), ("batch", False), ("running", False)}),
    gradients=frozenset({"batch", "running"}), extensions=frozenset({"replicas"}),
    replica_counts=frozenset({2, 4, 8}))


def signature_defaults(signature_of, decay: str, epsilon: str) -> dict[str, float | None]:
    """The ``decay`` and ``epsilon`` defaults read from a callable's signature (None: no default)."""
    parameters = inspect.signature(signature_of).parameters

    def default(name):
        value = parameters[name].default
        return None if value is inspect.Parameter.empty else value
    return {"decay_parameter": default(decay), "epsilon": default(epsilon)}


def dataclass_defaults(cls, decay: str, epsilon: str) -> dict[str, float | None]:
    """The ``decay`` and ``epsilon`` defaults of a dataclass-style module (flax.linen)."""
    fields = {f.name: f.default for f in dataclasses.fields(cls)}
    return {"decay_parameter": fields[decay], "epsilon": fields[epsilon]}


def empty_batch_dgamma_nan(name: str, form: str, link: str) -> Deviation:
    """A JAX normalization whose per-channel factor rsqrt(var + eps) multiplies the sums of the
    backward, on an empty batch (a fuzz finding, promoted); ``form`` is how the module writes y."""
    return Deviation(
        name=name,
        kind="edge",
        applies=empty_batch_gamma_gradient,
        behaviour=Mismatches(("dgamma",), "dgamma is NaN on an empty batch (the model's is 0, an empty sum)"),
        explanation=(f"{form}; for N == 0 the moments are 0/0 = NaN, and jax.grad gives d/dscale = "
                     "rsqrt(var + eps) * sum(dy (x - mean)) = NaN * 0 (found by bnconform fuzz)"),
        link=link,
    )


def case_replica_sizes(case: Case) -> tuple[int, ...] | None:
    """The case's split over replicas (every step of a replicated case is split alike), or None."""
    sizes = {None if s.replica_sizes is None else tuple(s.replica_sizes) for s in case.steps}
    if len(sizes) > 1:
        raise Unsupported(f"steps split differently. Expected: one replica_sizes for every step. Received: {sizes}")
    return sizes.pop() if sizes else None


def _training_split(case: Case) -> str | None:
    """replica_split of a replicated case with a training step on a non-empty batch, else None."""
    sizes = case_replica_sizes(case)
    if sizes is None or sum(sizes) == 0 or not any(s.is_training for s in case.steps):
        return None
    return replica_split(sizes)


@where("a training step split over replicas")
def replicated_training(case: Case) -> bool:
    return _training_split(case) is not None
