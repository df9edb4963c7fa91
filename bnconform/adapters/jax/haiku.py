"""haiku.BatchNorm under hk.transform_with_state, with params and state built from the case.

Translation (canonical knob -> hk.BatchNorm argument or state entry):

    channel_axis            -> axis = every other axis (haiku's ``axis`` lists the reduced axes)
    epsilon (+ floor)       -> eps = max(epsilon, epsilon_floor)   (added inside rsqrt)
    scale / center          -> create_scale / create_offset
    running_stats.decay     -> decay_rate (weight on the old statistic, the same convention)
    gamma, beta             -> params["batch_norm"]["scale" / "offset"], shaped like the mean
    running_mean / var      -> state["batch_norm/~/{mean,var}_ema"]["average"]
    zero_debias             -> always on: each hk.ExponentialMovingAverage keeps ``hidden`` (the
                               biased average, set to 0) and ``counter`` (set to 0) and reports
                               average = hidden / (1 - decay ** counter)
    num_updates             -> the EMA ``counter`` (returned after each step)
    normalize_with          -> is_training (True: batch moments and an EMA update)
    update_running_stats    -> keep the returned state (False: keep the old one)
    replica_sizes           -> cross_replica_axis = "replicas", the step under jax.shard_map over R
                               host CPU devices (replicas.py); equal replicas only (no mask)

With hidden = 0 and counter = 0 the state is exactly the canonical zero-debias state (z_0 = 0), and
``average`` holds the case's running statistics until the first update.

Capabilities (``HAIKU_CAPABILITIES``): eps inside the square root; conventions zero-debias always
on and a biased running variance, so a plain-EMA or Bessel case is unsupported where its results
depend on that; no cumulative rule, no schedule; no resumed counter (hidden / counter of a
half-debiased average are not in the canonical state); updates only with is_training=True.
Batch moments are not exposed. Replicas: equal splits only, shard_map's equal shards (hk.BatchNorm
has no mask); it lax.pmean's mean(x) and mean(x^2), the one-pass variance across replicas.

Gradients (both modes): jax.vjp of the same ``transformed.apply`` that produced y, with respect
to x and params (scale, offset), the EMA state an auxiliary output (common.differentiated);
hk.BatchNorm puts no stop_gradient on the batch moments.

Speed: one jitted step per (axes, create_scale, create_offset) runs both modes through
``lax.cond``; decay and eps are traced scalars, so cases of one input shape share a program. All
inputs go to the device in one transfer and all outputs come back in one, after the last step.
"""

from __future__ import annotations

import functools
from dataclasses import replace

from ...judging.selectors import case_in, input_dtype_in, mean_far_from_spread, squares_overflow, updates_running_stats
from ..base import Deviation, Mismatches
from ..findings import empty_batch_nan_running_stats, float32_variance_overflow
from .common import (JAX_CAPABILITIES, JaxAdapter, empty_batch_dgamma_nan, fetch, gradient_outputs, gradient_step,
                     in_mode, load_jax, put_state, signature_defaults)
from .replicas import REPLICA_AXIS, Programs, placement, sharded

HAIKU_EMA_SOURCE = "https://github.com/google-deepmind/dm-haiku/blob/main/haiku/_src/moving_averages.py"
HAIKU_BATCHNORM_SOURCE = "https://github.com/google-deepmind/dm-haiku/blob/main/haiku/_src/batch_norm.py"
EMA_NAMES = ("batch_norm/~/mean_ema", "batch_norm/~/var_ema")


@functools.lru_cache(maxsize=None)
def load_haiku():
    load_jax()
    import haiku

    return haiku


def build_step(reduce_axes: tuple[int, ...], create_scale: bool, create_offset: bool, static: bool | None = None,
               mesh=None):
    """A pure step: (params, state, x, training, decay, eps) -> (y, state after); both modes behind
    the traced ``training`` unless ``static`` fixes one (common.in_mode). With a ``mesh`` the layer
    synchronizes over its axis (``cross_replica_axis``) under shard_map (replicas.sharded)."""
    hk = load_haiku()

    def forward(x, is_training, decay, eps):
        layer = hk.BatchNorm(create_scale, create_offset, decay_rate=decay, eps=eps, axis=list(reduce_axes),
                             cross_replica_axis=None if mesh is None else REPLICA_AXIS)
        return layer(x, is_training=is_training)

    transformed = hk.transform_with_state(forward)

    def step(params, state, x, training, decay, eps):
        def run(is_training):
            return lambda s: transformed.apply(params, s, None, x, is_training, decay, eps)

        return in_mode(static, training, run(True), run(False), state)

    return step if mesh is None else sharded(step, mesh, sharded_at=(2,))


def build_params_and_state(case, device) -> tuple[dict, dict]:
    """haiku's params and EMA state for the case: averages = running stats, hidden = counter = 0."""
    jnp = load_jax().numpy
    values, axis, rank = put_state(case, device), case.config.channel_axis, case.rank
    shape = [1] * rank
    shape[axis] = case.channels

    def shaped(name):
        return values[name].reshape(shape)

    params = {}
    if case.config.scale:
        params["scale"] = shaped("gamma")
    if case.config.center:
        params["offset"] = shaped("beta")
    state = {ema: {"average": shaped(stat), "hidden": jnp.zeros_like(shaped(stat)),
                   "counter": load_jax().device_put(jnp.int32(0), device)}
             for ema, stat in zip(EMA_NAMES, ("running_mean", "running_var"))}
    return ({"batch_norm": params} if params else {}), state


EMPTY_BATCH_POISONS_EMA = empty_batch_nan_running_stats(
    "haiku-empty-batch-nan-ema",
    "the moments of an empty batch are NaN (0/0) and are folded into both EMAs, whose counter "
    "advances: corrupted state (the model keeps the state and num_updates unchanged for N == 0)",
    HAIKU_EMA_SOURCE, effect=", the counter advances",
    outputs=("y", "running_mean", "running_var", "num_updates", "dx", "dgamma"))

EMPTY_BATCH_DGAMMA_NAN = empty_batch_dgamma_nan(
    "haiku-empty-batch-dgamma-nan", "BatchNorm.__call__ computes inv = scale * rsqrt(var + eps), "
    "y = (inputs - mean) * inv + offset",
    "https://github.com/google-deepmind/dm-haiku/blob/f4d858a5cbb29140855d68f81f5fd625e078a5ae/"
    "haiku/_src/batch_norm.py#L204")

ONE_PASS_VARIANCE_CANCELS = Deviation(
    name="haiku-one-pass-variance-cancellation",
    kind="precision",
    applies=mean_far_from_spread(50, constant=False),
    behaviour=Mismatches(("y", "running_var", "dx", "dgamma"),
                         "y, running_var (and dx, dgamma) carry the cancellation error of E[x^2] - E[x]^2"),
    explanation="var = mean(x^2) - mean(x)^2 in the input dtype: 1e4 + N(0,1) in float32 gives var 8 or -4.6, "
                "1e8 + N(0,1) in float64 gives -6, N=2 float32 batches (|mean| ~100 x spread) are off by ~2.4e3 ulp; "
                "the backward differentiates the same formula, so dx and dgamma inherit the error",
    link=HAIKU_BATCHNORM_SOURCE,
)

# Data-dependent: where the rounding error of mean(x^2) exceeds the true variance, the unclamped
# difference goes negative (a constant channel whose square is exact stays at 0, so no property
# of the batch statistics alone selects these cells).
NEGATIVE_VARIANCE_CASES = ("degenerate/cancellation_float32_1e4", "degenerate/cancellation_float32_1e4_biased",
                           "degenerate/cancellation_float64_1e8", "degenerate/cancellation_float64_1e8_biased",
                           "degenerate/large_constant_channel", "degenerate/large_constant_channel_biased",
                           "degenerate/large_constant_channel_biased_zero_debias",
                           "gradients/offset_1e4_float32_train_biased_zero_debias")  # var -8 on this data

UNCLAMPED_NEGATIVE_VARIANCE = Deviation(
    name="haiku-unclamped-negative-variance",
    kind="defect",
    applies=case_in(*NEGATIVE_VARIANCE_CASES),
    behaviour=Mismatches(("y", "running_var", "dx", "dgamma"),
                         "y (and dx, dgamma) are NaN where the one-pass variance goes negative"),
    explanation="the one-pass variance is not clamped at 0 (flax clamps it): a negative value (-4.6 for "
                "1e4 + N(0,1) in float32, -6 for 1e8 + N(0,1) in float64, -16 for a constant channel of 1e4) "
                "gives rsqrt(var + eps) = NaN on valid finite input, and a negative running variance",
    link=HAIKU_BATCHNORM_SOURCE,
)

FLOAT32_SQUARES_OVERFLOW = float32_variance_overflow(
    "haiku-float32-squares-overflow",
    "mean(x^2) of float32 inputs ~1e37 overflows float32, so var = inf - inf = NaN",
    HAIKU_BATCHNORM_SOURCE, effect="var = inf - inf = NaN, so y, running_var, dx and dgamma are NaN",
    outputs=("y", "running_mean", "running_var", "dx", "dgamma"))

HALF_SQUARES_OVERFLOW = Deviation(
    name="haiku-float16-squares-overflow",
    kind="precision",
    applies=squares_overflow("float16") & input_dtype_in("float16"),
    behaviour=Mismatches(("y", "running_mean", "running_var"), "y and running_var are NaN"),
    explanation="moments are computed in the input dtype: x^2 ~2.4e8 overflows float16 (max 65504), so "
                "var = inf - inf = NaN; flax promotes to float32 and passes",
    link=HAIKU_BATCHNORM_SOURCE,
)

HALF_PRECISION_MOMENTS = Deviation(
    name="haiku-half-precision-moments",
    kind="dtype",
    applies=input_dtype_in("float16", "bfloat16") & updates_running_stats,
    behaviour=Mismatches(("running_mean", "running_var"),
                         "running statistics carry float16 / bfloat16 rounding of the batch moments"),
    explanation="hk.BatchNorm takes jnp.mean of the half-precision input, so the batch mean and variance are "
                "rounded to the input dtype (bfloat16 mean 1.0859 for 1.0871, ~2.5e4 float32 ulp) before "
                "they enter the float32 running statistics; y stays within the half-precision tolerance",
    link=HAIKU_BATCHNORM_SOURCE,
)

HALF_PRECISION_NORMALIZATION_GRADIENT = Deviation(
    name="haiku-half-precision-normalization-gradient",
    kind="dtype",
    applies=input_dtype_in("float16", "bfloat16") & (gradient_step("batch") | gradient_step("running")),
    behaviour=Mismatches(("dgamma",), "dgamma carries float16 / bfloat16 rounding of the normalized input"),
    explanation="hk.BatchNorm normalizes in the input dtype: the batch moments (training) or the running statistics "
                "cast by .astype(inputs.dtype) (inference), x - mean and rsqrt(var + eps) are all rounded to float16 / "
                "bfloat16, so dgamma = sum(dy * xhat), a float32 parameter gradient, is off by ~u(half) relative "
                "(4-9 x its float32 tolerance in training, 5 x for bfloat16 inference; float16 inference, one rounding "
                "of 2^-11 per channel: dgamma[1] -0.07140 for -0.07084 in gradients/float16_eval, 7.9e-3 relative, "
                "within the old whole-output tolerance but not its own channel's bound); y and dx stay within "
                "their half-precision bounds",
    link=HAIKU_BATCHNORM_SOURCE,
)

# haiku's conventions: its EMA is always zero-debiased (hk.ExponentialMovingAverage's default
# zero_debias=True, which hk.BatchNorm does not expose) and folds in the biased variance; the EMA
# state (hidden, counter) of an average resumed after n updates is not in the canonical state.
# hk.BatchNorm has no mask, so shard_map's equal shards are the only replica splits it can run.
HAIKU_CAPABILITIES = replace(JAX_CAPABILITIES, zero_debias=frozenset({True}), resumes_counter=False,
                             replica_splits=frozenset({"equal"}))


class HaikuAdapter(JaxAdapter):
    """haiku.BatchNorm (dm-haiku) applied through hk.transform_with_state."""

    name = "haiku"
    framework = "dm-haiku"
    requires = ("jax", "haiku")
    capabilities = HAIKU_CAPABILITIES
    decay_parameter = ("decay_rate", "old")
    deviations = (EMPTY_BATCH_POISONS_EMA, ONE_PASS_VARIANCE_CANCELS, UNCLAMPED_NEGATIVE_VARIANCE,
                  FLOAT32_SQUARES_OVERFLOW, HALF_SQUARES_OVERFLOW, HALF_PRECISION_MOMENTS,
                  HALF_PRECISION_NORMALIZATION_GRADIENT, EMPTY_BATCH_DGAMMA_NAN)
    notes = ("params/state built from the case (EMA hidden = counter = 0, average = running stats); "
             "zero-debiasing is always on; training without update keeps the old state; replicas: "
             "cross_replica_axis under shard_map on R CPU devices, equal splits only")
    speed_note = ("~1-2 ms per case once compiled; its first-pass median is XLA compile time (~0.3-1.3 s per new "
                  "input shape) because most cases it can express have an input shape of their own; a gradient case "
                  "compiles per shape and mode, ~1.3 x that in training, ~0.6 x in inference")

    def __init__(self):
        self._programs = Programs(build_step, x_at=2)  # gradient programs compiled only for steps with dy
        self._steps, self._gradient_steps = self._programs.steps, self._programs.gradient_steps

    def framework_defaults(self):
        return signature_defaults(load_haiku().BatchNorm.__init__, "decay_rate", "eps")

    def run(self, case, device):
        config, place = case.config, placement(case, device)
        key = (tuple(a for a in range(case.rank) if a != config.channel_axis), config.scale, config.center)
        params, state = build_params_and_state(case, place.at)
        decay, eps = float(config.running_stats.decay), float(config.effective_epsilon)
        results = []
        for step, (x, dy) in zip(case.steps, place.inputs(case)):
            cotangent = () if dy is None else (dy,)
            y, state_after, *grads = self._programs.for_step(key, place, step)(
                params, state, x, step.is_training, decay, eps, *cotangent)
            if step.update_running_stats:
                state = state_after
            mean_ema, var_ema = (state[name] for name in EMA_NAMES)
            results.append(place.mark({"y": y, "running_mean": mean_ema["average"], "running_var": var_ema["average"],
                                       "num_updates": mean_ema["counter"], **_gradients(step, config, grads)}))
        return [_flattened(r) for r in place.gather(fetch(results))]


def _gradients(step, config, grads) -> dict:
    """dx and the scale / offset gradients of a step with dy (haiku's params dict is empty when
    neither exists, and has no "batch_norm" entry then)."""
    if not grads:
        return {}
    dx, dparams = grads
    found = dparams.get("batch_norm", {})
    return gradient_outputs(step, config, dx, found.get("scale"), found.get("offset"))


def _flattened(fetched: dict) -> dict:
    """Per-channel outputs as [C] (haiku shapes them like the mean: 1 on every reduced axis)."""
    per_channel = ("running_mean", "running_var", "dgamma", "dbeta")
    return {**fetched, **{k: fetched[k].reshape(-1) for k in per_channel if k in fetched},
            "num_updates": int(fetched["num_updates"])}
