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

Capabilities and deviations that several of these adapters share live here too:
``JAX_CAPABILITIES`` (each adapter narrows it) and the flax statistics findings, with the flax
state layout and step loop that linen and nnx share (:func:`flax_state`, :func:`run_flax_steps`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from typing import Callable

import numpy as np

from ...capabilities import Capabilities
from ...dtypes import numpy_dtype
from ...model import Case
from ...selectors import Selector, mean_far_from_spread, squares_overflow, updates_on_empty_batch
from ..base import Adapter, Deviation, Mismatches

# KERAS_BACKEND=jax: Keras 3 on its jax backend declares the same environment and so shares the
# JAX family's host process (jax imported once); flax, haiku and equinox never read it.
X64_ENVIRONMENT = {"JAX_ENABLE_X64": "1", "KERAS_BACKEND": "jax"}


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


def program(steps: "JitCache", gradient_steps: "JitCache", key: tuple, step):
    """The compiled program for one step: the two-mode forward one without dy (shared with the
    forward-only cases), the differentiated one of the step's own mode with dy."""
    return steps.get(*key) if step.dy is None else gradient_steps.get(*key, step.is_training)


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
# Every one is a pure function that jax.vjp differentiates, in both modes.
JAX_CAPABILITIES = Capabilities(
    epsilon_modes=frozenset({"add_inside_sqrt"}), running_variance=frozenset({"biased"}),
    zero_debias=frozenset({False}), num_updates_schedule=frozenset({False}), running_rules=frozenset({"ema"}),
    step_kinds=frozenset({("batch", True), ("batch", False), ("running", False)}),
    gradients=frozenset({"batch", "running"}))


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


FLAX_NORMALIZATION_SOURCE = "https://github.com/google/flax/blob/main/flax/linen/normalization.py"

# flax linen and nnx share the statistics code (flax/linen/normalization.py: _compute_stats).
FLAX_FLOAT32_VARIANCE_OVERFLOW = Deviation(
    name="flax-float32-variance-overflow",
    kind="precision",
    applies=squares_overflow("float32"),
    behaviour=Mismatches(("y", "running_var"), "y and running_var are wrong because the float32 variance overflows"),
    explanation="statistics of float32 inputs are reduced in float32 (force_float32_reductions promotes only "
                "up to float32); the variance ~1.7e74 overflows: the two-pass variance is inf and y collapses "
                "to beta, the fast one is inf - inf = NaN",
    link=FLAX_NORMALIZATION_SOURCE,
)

FLAX_EMPTY_BATCH_POISONS_RUNNING_STATS = Deviation(
    name="flax-empty-batch-nan-running-stats",
    kind="defect",
    applies=updates_on_empty_batch,
    behaviour=Mismatches(("running_mean", "running_var"),
                         "running_mean and running_var become NaN after an empty training batch"),
    explanation="the mean over zero elements is NaN and is folded into the running statistics anyway: "
                "corrupted state (the model keeps the state unchanged for N == 0)",
    link=FLAX_NORMALIZATION_SOURCE,
)


class FlaxAdapter(JaxAdapter):
    """What flax.linen and flax.nnx share: the flax distribution, ``JAX_CAPABILITIES`` as they are
    (flax has no Bessel, zero-debias or schedule option), and ``momentum`` weighing the old statistic."""

    framework = "flax"
    requires = ("jax", "flax")
    capabilities = JAX_CAPABILITIES
    decay_parameter = ("momentum", "old")
    speed_note = ("~0.7 ms per forward case: forward cases share a few input shapes and reuse their compiled program; "
                  "a gradient case compiles its own program per input shape and mode (~1.3 x a forward compile in "
                  "training, ~0.6 x in inference; ~30-60 ms from the persistent cache), which is its median")


def fast_variance_cancels(name: str, explanation: str, link: str) -> Deviation:
    """flax's ``use_fast_variance=True`` finding (linen and nnx share _compute_stats): Var = E[x^2] -
    E[x]^2 loses the digits E[x^2] and E[x]^2 share once |mean| is over 50 x the spread (constant
    channels are exact: the clamp at 0 absorbs the rounding). The backward differentiates the
    same formula, so dx and dgamma carry the error too (dbeta = sum(dy) does not)."""
    return Deviation(
        name=name, kind="precision", applies=mean_far_from_spread(50, constant=False),
        behaviour=Mismatches(("y", "running_var", "dx", "dgamma"),
                             "y, running_var (and dx, dgamma) carry the cancellation error of E[x^2] - E[x]^2"),
        explanation=explanation, link=link)


def flax_state(case: Case, device) -> tuple[dict, dict]:
    """(params, running statistics) as flax names them: ``scale`` / ``bias`` for the affine parts
    the config uses, ``mean`` / ``var`` for the running statistics; on the device."""
    state = put_state(case, device)
    params = {}
    if case.config.scale:
        params["scale"] = state["gamma"]
    if case.config.center:
        params["bias"] = state["beta"]
    return params, {"mean": state["running_mean"], "var": state["running_var"]}


def run_flax_steps(steps: JitCache, gradient_steps: JitCache, key: tuple, case: Case, device: str) -> list[dict]:
    """Run the case through ``step_fn(params, stats, x, training, momentum, epsilon) -> (y, stats
    after)``, keeping the returned statistics only where a step updates (flax is functional:
    discarding them is how a training step without an update is expressed). A step with dy runs
    the :func:`differentiated` program instead, with dy appended (see :func:`program`)."""
    where, config = jax_device(device), case.config
    params, stats = flax_state(case, where)
    decay, epsilon = float(config.running_stats.decay), float(config.effective_epsilon)
    results = []
    for step, (x, dy) in zip(case.steps, put_inputs(case, where)):
        cotangent = () if dy is None else (dy,)
        y, after, *grads = program(steps, gradient_steps, key, step)(
            params, stats, x, step.is_training, decay, epsilon, *cotangent)
        stats = after if step.update_running_stats else stats
        found = {"y": y, "running_mean": stats["mean"], "running_var": stats["var"]}
        if grads:
            dx, dparams = grads
            found.update(gradient_outputs(step, config, dx, dparams.get("scale"), dparams.get("bias")))
        results.append(found)
    return fetch(results)
