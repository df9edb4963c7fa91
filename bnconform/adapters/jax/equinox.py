"""equinox.nn.BatchNorm in its two modes, called per example under jax.vmap(axis_name="batch").

Translation (canonical knob -> equinox.nn.BatchNorm argument or state entry):

    channel_axis            -> none: equinox takes channel-first examples, so the channel axis is
                               moved to position 1 (jnp.moveaxis, layout only) and back
    epsilon (+ floor)       -> eps = max(epsilon, epsilon_floor)   (added inside sqrt)
    scale and center        -> channelwise_affine (ONE switch for both gamma and beta)
    running_stats.decay     -> momentum (weight on the old statistic, the same convention)
    param_dtype             -> dtype
    gamma, beta             -> weight, bias (eqx.tree_at)
    normalize_with          -> inference=False (batch) / True (running)
    update_running_stats    -> keep the returned State (False: keep the old one)
    replica_sizes           -> axis_name = ("batch", "replicas") (the documented sequence of
                               names): the vmapped call under jax.shard_map over R host CPU devices,
                               the model and State built outside it (replicas.py); equal only
    mode "ema":   running_mean / var -> ema_state_index, ema_first_time_index = False: the case's
                  running statistics are populated ones (equinox's documented warm-up, "the batch
                  statistics are used to fill in the running statistics until they are populated",
                  is for its own empty buffers, which no canonical state is)
    mode "batch": the zero-debias convention: hidden EMA (batch_state_index) z_0 = 0 and
                  batch_counter = 0, so inference uses hidden / (1 - momentum ** counter), the
                  canonical zero-debiased statistics; a case with no update starts hidden at its
                  running statistics (counter 0: inference uses hidden as is). equinox stores
                  only the hidden EMA, so running statistics are not returned.

Capabilities (``JAX_CAPABILITIES`` narrowed): scale and center switch together; "ema" keeps a
plain EMA, "batch" is always zero-debiased and cannot resume a counter (the oracle's z_0 = 0 with
a nonzero count is not an equinox state); both a biased running variance, eps inside the sqrt,
no cumulative rule, no schedule, updates only with inference=False. Batch moments are not exposed.
Replicas: equal splits only (no mask). Mode "ema" cannot train under shard_map or pmap (State.set
rejects its untraced first-time flag: EMA_REPLICATED_TRAINING_RAISES).

Gradients (both modes): jax.vjp of the same vmapped model call that produced y, with respect to
x and the (weight, bias) set by eqx.tree_at, the returned State an auxiliary output
(common.differentiated); the channel moves are inside the differentiated function.

Speed: the model is built inside one jitted step per (mode, channel_axis, affine, dtype); eps and
momentum are traced scalars held in equinox's static fields for the duration of that trace (its
"JAX array set as static" warning is silenced there), so cases of one input shape share a program.
All inputs go to the device in one transfer and all outputs come back in one.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import replace

import numpy as np

from ...caseformat import model
from ...caseformat.dtypes import numpy_dtype
from ...judging.selectors import (input_dtype_in, mean_far_from_spread, param_dtype_in, squares_overflow, training_step,
                                  updates_on_empty_batch, where)
from ..base import Deviation, Mismatches, Raises
from ..findings import empty_batch_nan_running_stats, float32_variance_overflow
from .common import (JAX_CAPABILITIES, JaxAdapter, fetch, gradient_outputs, gradient_step, in_mode, load_jax, put_state,
                     replicated_training, signature_defaults)
from .replicas import REPLICA_AXIS, Programs, placement, sharded

EQUINOX_BATCHNORM_SOURCE = "https://github.com/patrick-kidger/equinox/blob/main/equinox/nn/_batch_norm.py"
EQUINOX_EMA_MODE_ISSUE = "https://github.com/patrick-kidger/equinox/issues/659"
EQUINOX_STATE_SOURCE = "https://github.com/patrick-kidger/equinox/blob/main/equinox/nn/_stateful.py"


@functools.lru_cache(maxsize=None)
def load_equinox():
    load_jax()
    import equinox

    return equinox


def make_model(mode, channels, affine, dtype, eps, momentum, axis_name="batch"):
    """eqx.nn.BatchNorm and its State, built inside a trace (eps / momentum may be tracers)."""
    eqx = load_equinox()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="A JAX array is being set as static")
        return eqx.nn.make_with_state(eqx.nn.BatchNorm)(
            channels, axis_name=axis_name, eps=eps, channelwise_affine=affine, momentum=momentum,
            mode=mode, dtype=numpy_dtype(dtype))


def _stat_indices(model, mode):
    if mode == "ema":
        return model.ema_state_index, model.ema_first_time_index
    return model.batch_state_index, model.batch_counter


def build_step(mode: str, channel_axis: int, affine: bool, dtype: str, training: bool | None = None, mesh=None):
    """A pure step: (params, stats, marker, x, training, eps, momentum) -> (y, stats, marker after).

    ``marker`` is the first-time flag ("ema") or the update counter ("batch"). With ``training``
    None both modes are compiled into one program (lax.cond on the traced flag); True / False
    trace one mode only (common.in_mode), for layers that fail to trace in the other mode and
    for the differentiated steps. With a ``mesh`` the layer's ``axis_name`` is ("batch",
    REPLICA_AXIS), the documented sequence of named axes: the vmapped call runs under shard_map
    (:func:`_replicated`), the model and its State built outside it.
    """
    jax, eqx = load_jax(), load_equinox()
    jnp = jax.numpy
    axis_name = "batch" if mesh is None else ("batch", REPLICA_AXIS)

    def step(params, stats, marker, x, is_training, eps, momentum):
        model, state = make_model(mode, stats[0].shape[0], affine, dtype, eps, momentum, axis_name)
        if affine:
            model = eqx.tree_at(lambda m: (m.weight, m.bias), model, tuple(params))
        stats_index, marker_index = _stat_indices(model, mode)
        state = state.set(stats_index, tuple(stats)).set(marker_index, marker)
        examples = jnp.moveaxis(x, channel_axis, 1)  # equinox wants channel-first examples

        def run(inference):
            def branch(s):
                call = jax.vmap(functools.partial(model, inference=inference), axis_name="batch",
                                in_axes=(0, None), out_axes=(0, None))
                y, s = call(examples, s) if mesh is None else _replicated(call, mesh)(examples, s)
                return jnp.moveaxis(y, 1, channel_axis), s.get(stats_index), s.get(marker_index)
            return branch

        return in_mode(training, is_training, run(False), run(True), state)

    return step


def _replicated(call, mesh):
    """The vmapped call under shard_map, examples split over the replicas, the State replicated.
    check_vma off: equinox's lax.pmean over ("batch", REPLICA_AXIS) names a vmap axis and a mesh
    axis at once, which shard_map's varying-axes check rejects in JAX 0.10 ("psum can only accept
    axis_name which corresponds to one of varying ... state of the input"); the collective itself is
    the one pmap runs (pmap does not check either)."""
    return sharded(call, mesh, sharded_at=(0,), check_vma=False)


@where("decay > 0 and (some gamma != 0 or a training step with dy and scale on): the running statistics enter "
       "the blend and y or dgamma depends on it")
def _blend_visible(case: model.Case) -> bool:
    """The blend differs from the batch moments (decay > 0) and reaches y (gamma == 0 gives y = beta)
    or dgamma = sum(dy * xhat) (which does not depend on gamma)."""
    gamma_matters = not case.config.scale or bool(np.any(case.initial_state.gamma != 0))
    return case.config.running_stats.decay > 0.0 and (gamma_matters or gradient_step("batch")(case, ""))


# eqx.nn.BatchNorm has no mask, so shard_map's equal shards are the only replica splits it can run.
EQUINOX_CAPABILITIES = replace(JAX_CAPABILITIES, separate_scale_center=False, replica_splits=frozenset({"equal"}))


class _EquinoxAdapter(JaxAdapter):
    """Shared machinery of the two equinox modes; subclasses set ``mode``."""

    framework = "equinox"
    requires = ("jax", "equinox")
    decay_parameter = ("momentum", "old")
    capabilities = EQUINOX_CAPABILITIES
    mode = ""
    speed_note = ("~0.5-1.3 ms per case once compiled; the first-pass median is XLA compile time (~0.5 s per new "
                  "input shape, the per-example vmap makes programs larger than flax's); a gradient case compiles per "
                  "shape and mode, ~1.3 x that in training, ~0.6 x in inference")

    def __init__(self):
        self._programs = Programs(build_step, x_at=3)  # gradient programs compiled only for steps with dy
        self._steps, self._gradient_steps = self._programs.steps, self._programs.gradient_steps
        self._split_modes: set[tuple] = set()  # (key, replicated, input dtype) failing to trace both modes

    def framework_defaults(self):
        return signature_defaults(load_equinox().nn.BatchNorm.__init__, "momentum", "eps")

    def initial_marker(self, case):
        raise NotImplementedError

    def initial_stats(self, case, state):
        return state["running_mean"], state["running_var"]

    def run(self, case, device):
        config, place = case.config, placement(case, device)
        state = put_state(case, place.at)
        params, stats = (state["gamma"], state["beta"]), self.initial_stats(case, state)
        marker = load_jax().device_put(self.initial_marker(case), place.at)
        eps, momentum = float(config.effective_epsilon), float(config.running_stats.decay)
        results = []
        for step, (x, dy) in zip(case.steps, place.inputs(case)):
            cotangent = () if dy is None else (dy,)
            arguments = (params, stats, marker, x, step.is_training, eps, momentum, *cotangent)
            y, stats_after, marker_after, *grads = self.call_step(case, step, place, arguments)
            if step.update_running_stats:
                stats, marker = stats_after, marker_after
            found = self.outputs(y, stats, marker)
            if grads:  # dparams is the (weight, bias) pair; both exist only when channelwise_affine
                dx, (dweight, dbias) = grads
                found.update(gradient_outputs(step, config, dx, dweight, dbias))
            results.append(place.mark(found))
        return [self.finish(r) for r in place.gather(fetch(results))]

    def call_step(self, case, step, place, arguments):
        """Run the two-mode program (a step with dy: the differentiated program of its own mode,
        Programs.for_step); if the two-mode one fails to trace, run the step's own mode alone.

        A layer that cannot trace one mode (equinox "ema" with half inputs and float32 state, or
        training over replicas) must still answer the steps of the other mode, and raise in the
        steps of the failing one.
        """
        config = case.config
        key = (self.mode, config.channel_axis, config.scale, config.param_dtype)
        if step.dy is not None:
            return self._programs.for_step(key, place, step)(*arguments)
        split = (key, place.mesh is not None, config.input_dtype)
        if split not in self._split_modes:
            try:
                return self._programs.forward(key, place)(*arguments)
            except (TypeError, ValueError):  # ValueError: mode "ema" training under shard_map (EMA_REPLICATED_...)
                self._split_modes.add(split)
        return self._programs.forward(key, place, step.is_training)(*arguments)

    def outputs(self, y, stats, marker) -> dict:
        return {"y": y, "running_mean": stats[0], "running_var": stats[1]}

    def finish(self, fetched: dict) -> dict:
        return fetched


# Half input with float32 state: training in mode "ema" raises (EMA_HALF_INPUT_RAISES); half state runs.
HALF_INPUT_FLOAT32_STATE = input_dtype_in("float16", "bfloat16") & param_dtype_in("float32")

EMA_HALF_INPUT_RAISES = Deviation(
    name="equinox-ema-half-input-type-error",
    kind="defect",
    applies=HALF_INPUT_FLOAT32_STATE & training_step(),
    behaviour=Raises("TypeError", "lax.select requires arguments to have the same dtypes"),
    explanation="mode 'ema' cannot train on float16 / bfloat16 inputs with float32 state: the first-time "
                "lax.select mixes the half-precision batch statistics with the float32 blended ones and does "
                "not promote; inference-only steps work, and so does state in the input's half dtype",
    link=EQUINOX_BATCHNORM_SOURCE,
)

EMA_EMPTY_BATCH = empty_batch_nan_running_stats(
    "equinox-ema-empty-batch-nan",
    "the moments of an empty batch are NaN (0/0) and are blended into the state: corrupted "
    "state (the model keeps the state unchanged for N == 0)",
    EQUINOX_BATCHNORM_SOURCE)

EMA_FLOAT32_OVERFLOW = float32_variance_overflow(
    "equinox-ema-float32-variance-overflow",
    "the variance of float32 inputs is reduced in float32 and overflows (~1.7e74): inf",
    EQUINOX_BATCHNORM_SOURCE)

EMA_BLENDED_NORMALIZATION = Deviation(
    name="equinox-ema-blended-training-normalization",
    kind="defect",
    applies=training_step(1) & _blend_visible & ~HALF_INPUT_FLOAT32_STATE & ~squares_overflow("float32"),
    behaviour=Mismatches(("y", "dx", "dgamma"), "training y (and dx, dgamma) come from normalizing with the updated "
                         "running statistics, not the batch's"),
    explanation="mode 'ema' normalizes a training batch with (1 - momentum) * batch + momentum * running "
                "statistics (the freshly updated EMA), not with the batch moments, even for a training step "
                "whose update is discarded; equinox itself recommends mode='batch' for new code. The backward "
                "differentiates that blend: only (1 - momentum) of the dependence on the batch moments is left, "
                "so dx is not the model's (N = 1 gives dx != 0)",
    link=EQUINOX_EMA_MODE_ISSUE,
)


EMA_REPLICATED_TRAINING_RAISES = Deviation(
    name="equinox-ema-replicated-training-value-error",
    kind="defect",
    applies=replicated_training,
    behaviour=Raises("ValueError", "Old and new values have different structures/shapes/dtypes"),
    explanation="mode 'ema' cannot train under shard_map (or pmap, which fails the same way): __call__ stores its "
                "first-time flag with state.set(ema_first_time_index, jnp.array(False)), and State.set compares "
                "jax.eval_shape of the old and new values, sharding included; inside the mapped function the stored "
                "flag is traced with the replica mesh's sharding and the new constant has none, so the two bool[] "
                "compare unequal and it raises. Mode 'batch' stores traced values only and synchronizes",
    link=EQUINOX_STATE_SOURCE,
)


class EquinoxEmaAdapter(_EquinoxAdapter):
    """eqx.nn.BatchNorm(mode="ema"): running statistics blended into training normalization."""

    name = "equinox.ema"
    mode = "ema"
    deviations = (EMA_HALF_INPUT_RAISES, EMA_EMPTY_BATCH, EMA_FLOAT32_OVERFLOW, EMA_BLENDED_NORMALIZATION,
                  EMA_REPLICATED_TRAINING_RAISES)
    notes = ("per-example call under jax.vmap(axis_name='batch'), channel axis moved to 1; "
             "first-time flag off: the case's running statistics are populated; replicas: shard_map on R CPU "
             "devices, equal splits only")

    def initial_marker(self, case):
        return load_jax().numpy.asarray(False)


BATCH_EMPTY_BATCH = Deviation(
    name="equinox-batch-empty-batch-nan",
    kind="defect",
    applies=updates_on_empty_batch,
    behaviour=Mismatches(("y", "num_updates"), "the hidden EMA becomes NaN (later eval y) and the counter advances"),
    explanation="the moments of an empty batch are NaN (0/0), are folded into the hidden EMA and the "
                "counter advances: corrupted state (the model keeps the state and num_updates unchanged)",
    link=EQUINOX_BATCHNORM_SOURCE,
)

HALF_SQUARES_OVERFLOW = Deviation(
    name="equinox-float16-squares-overflow",
    kind="precision",
    applies=squares_overflow("float16") & input_dtype_in("float16"),
    behaviour=Mismatches(("y",), "y is NaN / inf"),
    explanation="batch moments are computed in the input dtype: (x - mean)^2 summed over the batch "
                "overflows float16 (max 65504)",
    link=EQUINOX_BATCHNORM_SOURCE,
)

BATCH_FLOAT32_OVERFLOW = Deviation(
    name="equinox-batch-float32-variance-overflow",
    kind="precision",
    applies=squares_overflow("float32"),
    behaviour=Mismatches(("y", "dx", "dgamma"), "y collapses to beta, dx = dgamma = 0"),
    explanation="moments of float32 inputs are computed in float32: the variance ~1.7e74 overflows to inf",
    link=EQUINOX_BATCHNORM_SOURCE,
)


HALF_PRECISION_NORMALIZATION_GRADIENT = Deviation(
    name="equinox-batch-half-precision-normalization-gradient",
    kind="dtype",
    applies=input_dtype_in("float16", "bfloat16") & gradient_step("batch"),
    behaviour=Mismatches(("dgamma",), "dgamma carries float16 / bfloat16 rounding of the normalized input"),
    explanation="in training eqx.nn.BatchNorm takes the batch mean and variance with jnp.mean of the half-precision "
                "input and normalizes (y - mean) / sqrt(var + eps) in that dtype, so dgamma = sum(dy * xhat), a "
                "float32 parameter gradient, is off by ~u(half) relative (6 x its float32 tolerance for float16, "
                "50 x for bfloat16 in the gradients family); y and dx stay within their half-precision tolerance, "
                "inference (float32 state) is exact",
    link=EQUINOX_BATCHNORM_SOURCE,
)


HALF_PRECISION_BATCH_MEAN = Deviation(
    name="equinox-batch-half-precision-batch-mean",
    kind="dtype",
    applies=input_dtype_in("float16", "bfloat16") & training_step(1024) & mean_far_from_spread(2),
    behaviour=Mismatches(("y",), "y normalized with a batch mean reduced in the half dtype"),
    explanation="under jax.vmap each example's mean is jnp.mean of its half-precision values and lax.pmean "
                "averages the per-example means over the batch axis in that dtype (_stats in "
                "equinox/nn/_batch_norm.py), so the batch mean of offset data carries a few half ulps: in "
                "formulas/float16_nhwc_n2048_offset_batch_no_update (mean 2.98, 32 examples x 64) y is off by "
                "0.0074 at elements near 0, where a float32 reduction rounded once stays within 0.003 (the "
                "element's own bound; the whole-output tolerance of 0.04 let it pass)",
    link=EQUINOX_BATCHNORM_SOURCE,
)


class EquinoxBatchModeAdapter(_EquinoxAdapter):
    """eqx.nn.BatchNorm(mode="batch"): batch statistics in training, zero-debiased EMA at inference."""

    name = "equinox.batch"
    mode = "batch"
    capabilities = replace(EQUINOX_CAPABILITIES, zero_debias=frozenset({True}), resumes_counter=False)
    deviations = (BATCH_EMPTY_BATCH, HALF_SQUARES_OVERFLOW, BATCH_FLOAT32_OVERFLOW, HALF_PRECISION_NORMALIZATION_GRADIENT,
                  HALF_PRECISION_BATCH_MEAN)
    notes = ("per-example call under jax.vmap(axis_name='batch'), channel axis moved to 1; "
             "hidden EMA = 0 and counter = 0 (zero-debias), or the running stats when nothing updates them; "
             "replicas: axis_name ('batch', 'replicas') under shard_map on R CPU devices, equal splits only")

    def supports(self, case, device):
        """equinox shows hidden as is while counter == 0, so hidden cannot be both the running
        statistics (an inference step before the first update) and z_0 = 0 (for the updates)."""
        updated = False
        for step in case.steps:
            if not step.is_training and not updated and _updates(case):
                return ("eqx.nn.BatchNorm(mode='batch') normalizes with its hidden EMA as is until the first "
                        "update, which must start at 0 for zero-debiasing: an inference step with the case's "
                        "running statistics before the first update cannot be expressed")
            updated = updated or step.update_running_stats
        return None

    def initial_marker(self, case):
        return 0  # a Python int traces weakly typed, like equinox's jnp.array(0)

    def initial_stats(self, case, state):
        if _updates(case):
            jnp = load_jax().numpy
            return jnp.zeros_like(state["running_mean"]), jnp.zeros_like(state["running_var"])
        return super().initial_stats(case, state)

    def outputs(self, y, stats, marker) -> dict:
        return {"y": y, "num_updates": marker}  # equinox holds only the hidden (biased) EMA

    def finish(self, fetched: dict) -> dict:
        return {**fetched, "num_updates": int(fetched["num_updates"])}


def _updates(case: model.Case) -> bool:
    return any(step.update_running_stats for step in case.steps)
