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
``JAX_CAPABILITIES`` (each adapter narrows it), the selectors of replicated cases, and the flax
statistics findings (cross-replica ones included), with the flax state layout and step loop that
linen and nnx share (:func:`flax_state`, :func:`run_flax_steps`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from typing import Callable

import numpy as np

from ...capabilities import Capabilities, replica_split
from ...dtypes import numpy_dtype
from ...model import Case
from ...selectors import (Selector, empty_batch_gamma_gradient, input_dtype_in, mean_far_from_spread, squares_overflow,
                          updates_on_empty_batch, where)
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


FLAX_NORMALIZATION_SOURCE = "https://github.com/google/flax/blob/main/flax/linen/normalization.py"
NNX_NORMALIZATION_SOURCE = "https://github.com/google/flax/blob/main/flax/nnx/nn/normalization.py"
# A commit whose normalization files equal flax 0.12.8's (the line anchors below are checked there).
FLAX_AT = "https://github.com/google/flax/blob/18f8f311c275d57f46d95e41b15aa97b454754c0/flax/"


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


# flax linen and nnx share the statistics code (flax/linen/normalization.py: _compute_stats).
FLAX_FLOAT32_VARIANCE_OVERFLOW = Deviation(
    name="flax-float32-variance-overflow",
    kind="precision",
    applies=squares_overflow("float32"),
    behaviour=Mismatches(("y", "running_var", "dx", "dgamma"), "y, running_var, dx and dgamma are wrong: the "
                         "float32 variance overflows (inf: y = beta, dx = dgamma = 0; fast variance NaN: all NaN)"),
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


@where("a training step split over replicas of unequal sizes, none empty")
def unequal_replicas(case: Case) -> bool:
    return _training_split(case) == "unequal"


@where("a training step split over replicas, some but not all of them empty")
def some_replica_empty(case: Case) -> bool:
    return _training_split(case) == "empty"


def flax_replica_deviations(prefix: str, link: str) -> tuple[Deviation, Deviation]:
    """flax's cross-replica findings (linen and nnx each have this _compute_stats): with
    ``axis_name`` the statistics are ``lax.pmean`` of each device's (masked) means, every device
    weighing 1/R whatever its count; unequal replicas, expressed with the documented ``mask``, get
    the mean of the replicas' moments, and an empty replica's 0/0 reaches every device."""
    unweighted = Deviation(
        name=f"{prefix}-cross-replica-mean-of-means", kind="defect", applies=unequal_replicas,
        behaviour=Mismatches(("y", "running_mean", "running_var", "dx", "dgamma"),
                             "y, the running statistics (and dx, dgamma) come from the unweighted mean of the "
                             "replicas' moments"),
        explanation="BatchNorm(axis_name=...) combines replicas with lax.pmean of each device's mean(x, where=mask) "
                    "(and of its E[x^2] or E[(x - mu)^2]): every replica weighs 1/R, so replicas of unequal sizes "
                    "(padded and masked) get the mean of their means, not the mean of the union, and a variance "
                    "off accordingly (replicas of 6 and 2 samples around -5 and +5: mean -0.43 for -3.06, y off "
                    "by up to 0.9); the backward differentiates the same statistics",
        link=link)
    empty = Deviation(
        name=f"{prefix}-cross-replica-empty-replica-nan", kind="defect", applies=some_replica_empty,
        behaviour=Mismatches(("y", "running_mean", "running_var", "dx", "dgamma"),
                             "y, the running statistics (and dx, dgamma) are NaN on every replica"),
        explanation="an empty replica's mean(x, where=mask) over no element is 0/0 = NaN, and lax.pmean sums it into "
                    "every device's statistics: y and the running statistics are NaN everywhere, where the model lets "
                    "an empty replica contribute nothing",
        link=link)
    return unweighted, empty


# Cross-replica findings, re-verified on the replicas family's biased twins (flax keeps a biased
# running variance) and checked against a NumPy mean of means in tests/test_jax_replicas.py.
REPLICA_FINDINGS = {"flax.linen": flax_replica_deviations("flax", FLAX_NORMALIZATION_SOURCE),
                         "flax.nnx": flax_replica_deviations("nnx", NNX_NORMALIZATION_SOURCE)}
REPLICA_FINDINGS["flax.linen.exact_variance"] = REPLICA_FINDINGS["flax.linen"]


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
        # Half inputs are excluded: flax reduces them in float32 (force_float32_reductions) and
        # judges y at half tolerances, which the float32 cancellation stays within at |mean| = 80 x
        # the spread (measured on formulas/{float16,bfloat16}_params_offset_train).
        name=name, kind="precision",
        applies=mean_far_from_spread(50, constant=False) & ~input_dtype_in("float16", "bfloat16"),
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
    return params, {name: _flax_stat(state[f"running_{name}"]) for name in ("mean", "var")}


def _flax_stat(value):
    """A running statistic in the dtype flax keeps it: float32 for half params (linen's
    force_float32_reductions=True default and nnx create batch stats in float32 whatever
    param_dtype is, and linen's update promotes half ones to float32); others as given. Half
    values are exact in float32."""
    jnp = load_jax().numpy
    return value.astype(jnp.float32) if value.dtype in (jnp.float16, jnp.bfloat16) else value


def run_flax_steps(programs, key: tuple, case: Case, place) -> list[dict]:
    """Run the case through ``step_fn(params, stats, x, training, momentum, epsilon, mask) -> (y,
    stats after)``, keeping the returned statistics only where a step updates (flax is functional:
    discarding them is how a training step without an update is expressed). ``place`` (replicas.py)
    says where: one device, or R devices with the batch split (``mask``: the padding rows of unequal
    replicas, else None). A step with dy runs the :func:`differentiated` program, dy appended."""
    config = case.config
    params, stats = flax_state(case, place.at)
    decay, epsilon = float(config.running_stats.decay), float(config.effective_epsilon)
    results = []
    for step, (x, dy) in zip(case.steps, place.inputs(case)):
        cotangent = () if dy is None else (dy,)
        y, after, *grads = programs.for_step(key, place, step)(
            params, stats, x, step.is_training, decay, epsilon, place.mask, *cotangent)
        stats = after if step.update_running_stats else stats
        found = {"y": y, "running_mean": stats["mean"], "running_var": stats["var"]}
        if grads:
            dx, dparams = grads
            found.update(gradient_outputs(step, config, dx, dparams.get("scale"), dparams.get("bias")))
        results.append(place.mark(found))
    return place.gather(fetch(results))
