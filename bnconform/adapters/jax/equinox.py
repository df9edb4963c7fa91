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
    mode "ema":   running_mean / var -> ema_state_index;  num_updates == 0 -> ema_first_time_index
                  (equinox's "not populated yet" flag: the first training call copies the batch
                  statistics into the running ones instead of averaging)
    mode "batch": running_mean / var -> batch_state_index (the "hidden" EMA), num_updates ->
                  batch_counter; inference divides hidden by 1 - momentum ** counter. For a
                  zero_debias case hidden starts at 0 (the canonical z_0 = 0) and, as equinox
                  stores only the biased hidden EMA, running statistics are not returned.

Unsupported: epsilon outside the sqrt or as a max; the cumulative rule; the num_updates schedule;
scale != center; zero-debiasing in "ema" mode; updating running statistics in inference mode.
Batch moments are not exposed.

Speed: the model is built inside one jitted step per (mode, channel_axis, affine, dtype); eps and
momentum are traced scalars held in equinox's static fields for the duration of that trace (its
"JAX array set as static" warning is silenced there), so cases of one input shape share a program.
"""

from __future__ import annotations

import functools
import warnings

from .common import (JaxAdapter, JitCache, bessel_matters, case_in, common_unsupported, empty_batch_update,
                          jax_device, load_jax, put, put_state, to_numpy, updates_outside_training,
                          updates_with)
from ..base import Deviation, MatchesVariant, Mismatches, Raises, has_training_step, variant
from ...dtypes import numpy_dtype

EQUINOX_BATCHNORM_SOURCE = "https://github.com/patrick-kidger/equinox/blob/main/equinox/nn/_batch_norm.py"
EQUINOX_EMA_WARMUP_ISSUE = "https://github.com/patrick-kidger/equinox/issues/659"
EQUINOX_BATCH_DEBIAS_ISSUE = "https://github.com/patrick-kidger/equinox/issues/1010"


@functools.lru_cache(maxsize=None)
def load_equinox():
    load_jax()
    import equinox

    return equinox


def make_model(mode, channels, affine, dtype, eps, momentum):
    """eqx.nn.BatchNorm and its State, built inside a trace (eps / momentum may be tracers)."""
    eqx = load_equinox()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="A JAX array is being set as static")
        return eqx.nn.make_with_state(eqx.nn.BatchNorm)(
            channels, axis_name="batch", eps=eps, channelwise_affine=affine, momentum=momentum,
            mode=mode, dtype=numpy_dtype(dtype))


def _stat_indices(model, mode):
    if mode == "ema":
        return model.ema_state_index, model.ema_first_time_index
    return model.batch_state_index, model.batch_counter


def build_step(mode: str, channel_axis: int, affine: bool, dtype: str, training: bool | None = None):
    """A pure step: (params, stats, marker, x, training, eps, momentum) -> (y, stats, marker after).

    ``marker`` is the first-time flag ("ema") or the update counter ("batch"). With ``training``
    None both modes are compiled into one program (lax.cond on the traced flag); True / False
    trace one mode only, for layers that fail to trace in the other mode.
    """
    jax, eqx = load_jax(), load_equinox()
    jnp = jax.numpy

    def step(params, stats, marker, x, is_training, eps, momentum):
        model, state = make_model(mode, stats[0].shape[0], affine, dtype, eps, momentum)
        if affine:
            model = eqx.tree_at(lambda m: (m.weight, m.bias), model, tuple(params))
        stats_index, marker_index = _stat_indices(model, mode)
        state = state.set(stats_index, tuple(stats)).set(marker_index, marker)
        examples = jnp.moveaxis(x, channel_axis, 1)  # equinox wants channel-first examples

        def run(inference):
            def branch(s):
                call = jax.vmap(functools.partial(model, inference=inference), axis_name="batch",
                                in_axes=(0, None), out_axes=(0, None))
                y, s = call(examples, s)
                return jnp.moveaxis(y, 1, channel_axis), s.get(stats_index), s.get(marker_index)
            return branch

        if training is not None:
            return run(not training)(state)
        return jax.lax.cond(is_training, run(False), run(True), state)

    return step


def _half_with_update(case, device) -> bool:
    return case.config.input_dtype in ("float16", "bfloat16") and updates_with(case)


def _eval_after_update(case) -> bool:
    """Some non-empty inference step comes after a non-empty update."""
    updated = False
    for step, n in zip(case.steps, case.reduce_counts()):
        if not step.is_training and updated and n > 0:
            return True
        updated = updated or (step.update_running_stats and n > 0)
    return False


BIASED_RUNNING_VARIANCE = Deviation(
    name="equinox-biased-running-variance",
    applies_to="cases asking for a Bessel-corrected running variance (N >= 2, decay < 1)",
    applies=lambda case, device: bessel_matters(case),
    behaviour=MatchesVariant("matches the oracle with a biased running variance",
                             lambda case: variant(case, running_stats={"variance": "biased"})),
    explanation="_stats folds the biased batch variance mean((x - mean)^2) into the running variance",
    link=EQUINOX_BATCHNORM_SOURCE,
)

HALF_SQUARES_OVERFLOW = Deviation(
    name="equinox-float16-squares-overflow",
    applies_to="float16 inputs near 1.5e4 (degenerate/float16_near_overflow)",
    applies=case_in("degenerate/float16_near_overflow"),
    behaviour=Mismatches(("y", "running_mean", "running_var"), "y and running_var are NaN / inf"),
    explanation="batch moments are computed in the input dtype: (x - mean)^2 summed over the batch "
                "overflows float16 (max 65504)",
    link=EQUINOX_BATCHNORM_SOURCE,
)

HALF_PRECISION_MOMENTS = Deviation(
    name="equinox-half-precision-moments",
    applies_to="float16 / bfloat16 inputs with a training update (mode 'batch')",
    applies=_half_with_update,
    behaviour=Mismatches(("running_mean", "running_var"),
                         "running statistics carry float16 / bfloat16 rounding of the batch moments"),
    explanation="jnp.mean of the half-precision examples gives half-precision moments (e.g. float16 mean "
                "0.061449 for 0.061521, ~2e4 float32 ulp) that enter the float32 running statistics; y "
                "stays within the half-precision tolerance",
    link=EQUINOX_BATCHNORM_SOURCE,
)


class _EquinoxAdapter(JaxAdapter):
    """Shared machinery of the two equinox modes; subclasses set ``mode``."""

    framework = "equinox"
    requires = ("jax", "equinox")
    mode = ""

    def __init__(self):
        self._steps = JitCache(build_step)
        self._split_modes: set[tuple] = set()  # (structural key, input dtype) failing to trace both modes

    def supports(self, case, device):
        config = case.config
        reason = common_unsupported(case, "eqx.nn.BatchNorm")
        if reason:
            return reason
        if config.scale != config.center:
            return ("eqx.nn.BatchNorm has one channelwise_affine switch for gamma and beta together; "
                    f"scale={config.scale}, center={config.center} cannot be expressed")
        if updates_outside_training(case):
            return "eqx.nn.BatchNorm updates its state only when inference=False (batch statistics)"
        return None

    def initial_marker(self, case):
        raise NotImplementedError

    def initial_stats(self, case, state):
        return state["running_mean"], state["running_var"]

    def run(self, case, device):
        config, where = case.config, jax_device(device)
        state = put_state(case, where)
        params, stats = (state["gamma"], state["beta"]), self.initial_stats(case, state)
        marker = load_jax().device_put(self.initial_marker(case), where)
        eps, momentum = float(config.effective_epsilon), float(config.running_stats.decay)
        results = []
        for step in case.steps:
            x = put(step.x, config.input_dtype, where)
            y, stats_after, marker_after = self.call_step(case, (params, stats, marker, x, step.is_training, eps, momentum))
            if step.update_running_stats:
                stats, marker = stats_after, marker_after
            results.append(self.outputs(case, y, stats, marker))
        return results

    def call_step(self, case, arguments):
        """Run the two-mode program; if it fails to trace, run the step's own mode alone.

        A layer that cannot trace one mode (equinox "ema" with half inputs and float32 state) must
        still answer the steps of the other mode, and raise in the steps of the failing one.
        """
        config = case.config
        key = (self.mode, config.channel_axis, config.scale, config.param_dtype)
        if key + (config.input_dtype,) not in self._split_modes:
            try:
                return self._steps.get(*key)(*arguments)
            except TypeError:
                self._split_modes.add(key + (config.input_dtype,))
        return self._steps.get(*key, arguments[4])(*arguments)

    def outputs(self, case, y, stats, marker) -> dict:
        return {"y": to_numpy(y), "running_mean": to_numpy(stats[0]), "running_var": to_numpy(stats[1])}


EMA_HALF_INPUT_RAISES = Deviation(
    name="equinox-ema-half-input-type-error",
    applies_to="mode 'ema' with float16 / bfloat16 inputs (float32 state) and a training step",
    applies=lambda case, device: case.config.input_dtype in ("float16", "bfloat16") and has_training_step(case),
    behaviour=Raises("TypeError", "lax.select requires arguments to have the same dtypes"),
    explanation="the first-time lax.select mixes the half-precision batch statistics with the float32 "
                "blended ones and does not promote; inference-only steps work",
    link=EQUINOX_BATCHNORM_SOURCE,
)

EMA_EMPTY_BATCH = Deviation(
    name="equinox-ema-empty-batch-nan",
    applies_to="mode 'ema', a training step with N == 0 that updates the running statistics",
    applies=empty_batch_update,
    behaviour=Mismatches(("running_mean", "running_var"), "running statistics become NaN"),
    explanation="the moments of an empty batch are NaN (0/0) and, first time, are copied into the state "
                "(the model keeps the state unchanged for N == 0)",
    link=EQUINOX_BATCHNORM_SOURCE,
)

EMA_FLOAT32_OVERFLOW = Deviation(
    name="equinox-ema-float32-variance-overflow",
    applies_to="float32 inputs of magnitude ~1e37 (degenerate/huge_mixed_sign_float32)",
    applies=case_in("degenerate/huge_mixed_sign_float32"),
    behaviour=Mismatches(("y", "running_mean", "running_var"), "y collapses to beta, running stats differ"),
    explanation="the float32 variance (~1.7e74) overflows to inf so y = beta; the running statistics also "
                "show the first-time copy declared for mode 'ema'",
    link=EQUINOX_BATCHNORM_SOURCE,
)

EMA_WARM_UP_AND_BLEND = Deviation(
    name="equinox-ema-warm-up-and-blended-normalization",
    applies_to="mode 'ema', plain EMA with decay > 0 and a non-empty training update",
    applies=lambda case, device: case.config.running_stats.decay != 0.0 and updates_with(case),
    behaviour=Mismatches(("y", "running_mean", "running_var"),
                         "the first update copies the batch statistics; later training steps normalize "
                         "with the updated running statistics"),
    explanation="with num_updates == 0 (first-time flag set) the first training call replaces the "
                "running statistics by the batch ones instead of averaging; every later training call "
                "normalizes with (1 - momentum) * batch + momentum * running, not with the batch moments",
    link=EQUINOX_EMA_WARMUP_ISSUE,
)


class EquinoxEmaAdapter(_EquinoxAdapter):
    """eqx.nn.BatchNorm(mode="ema"): running statistics blended into training normalization."""

    name = "equinox.ema"
    mode = "ema"
    deviations = (EMA_HALF_INPUT_RAISES, EMA_EMPTY_BATCH, EMA_FLOAT32_OVERFLOW, EMA_WARM_UP_AND_BLEND,
                  BIASED_RUNNING_VARIANCE)
    notes = ("per-example call under jax.vmap(axis_name='batch'), channel axis moved to 1; "
             "first-time flag = (num_updates == 0)")

    def supports(self, case, device):
        if case.config.running_stats.zero_debias:
            return "eqx.nn.BatchNorm(mode='ema') has no zero-debiasing (it warms up by copying the first batch)"
        return super().supports(case, device)

    def initial_marker(self, case):
        return load_jax().numpy.asarray(case.initial_state.num_updates == 0)


BATCH_EMPTY_BATCH = Deviation(
    name="equinox-batch-empty-batch-nan",
    applies_to="mode 'batch', a training step with N == 0 that updates the running statistics",
    applies=empty_batch_update,
    behaviour=Mismatches(("y", "running_mean", "running_var", "num_updates"),
                         "running statistics become NaN and the counter advances"),
    explanation="the moments of an empty batch are NaN (0/0), are folded into the hidden EMA and the "
                "counter advances (the model keeps the state and num_updates unchanged for N == 0)",
    link=EQUINOX_BATCHNORM_SOURCE,
)

BATCH_FLOAT32_OVERFLOW = Deviation(
    name="equinox-batch-float32-variance-overflow",
    applies_to="float32 inputs of magnitude ~1e37 (degenerate/huge_mixed_sign_float32)",
    applies=case_in("degenerate/huge_mixed_sign_float32"),
    behaviour=Mismatches(("y", "running_var"), "y collapses to beta and running_var is inf"),
    explanation="moments of float32 inputs are computed in float32: the variance ~1.7e74 overflows to inf",
    link=EQUINOX_BATCHNORM_SOURCE,
)

BATCH_DEBIASED_AT_INFERENCE = Deviation(
    name="equinox-batch-inference-divides-by-1-minus-momentum-power",
    applies_to="mode 'batch', plain EMA with decay > 0, an inference step after a training update",
    applies=lambda case, device: (case.config.running_stats.decay != 0.0 and not case.config.running_stats.zero_debias
                                  and _eval_after_update(case)),
    behaviour=Mismatches(("y", "running_var"), "inference y uses the running statistics divided by "
                                               "1 - momentum ** counter"),
    explanation="inference divides the stored EMA by 1 - momentum**counter (zero-debiasing that assumes "
                "the EMA started at 0): EMA stats resumed from the case's running statistics are inflated "
                "(x10 after one update at momentum 0.9; inf / NaN at momentum 1); running_var is biased",
    link=EQUINOX_BATCH_DEBIAS_ISSUE,
)


class EquinoxBatchModeAdapter(_EquinoxAdapter):
    """eqx.nn.BatchNorm(mode="batch"): batch statistics in training, zero-debiased EMA at inference."""

    name = "equinox.batch"
    mode = "batch"
    deviations = (BATCH_EMPTY_BATCH, HALF_SQUARES_OVERFLOW, HALF_PRECISION_MOMENTS, BATCH_FLOAT32_OVERFLOW,
                  BATCH_DEBIASED_AT_INFERENCE, BIASED_RUNNING_VARIANCE)
    notes = ("per-example call under jax.vmap(axis_name='batch'), channel axis moved to 1; "
             "hidden EMA = running stats (0 for zero_debias cases), counter = num_updates")

    def initial_marker(self, case):
        return case.initial_state.num_updates  # a Python int traces weakly typed, like equinox's jnp.array(0)

    def initial_stats(self, case, state):
        if case.config.running_stats.zero_debias:
            jnp = load_jax().numpy
            return jnp.zeros_like(state["running_mean"]), jnp.zeros_like(state["running_var"])
        return super().initial_stats(case, state)

    def outputs(self, case, y, stats, marker) -> dict:
        if case.config.running_stats.zero_debias:  # equinox holds only the biased hidden EMA
            return {"y": to_numpy(y), "num_updates": int(marker)}
        return {**super().outputs(case, y, stats, marker), "num_updates": int(marker)}
