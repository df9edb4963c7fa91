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

With hidden = 0 and counter = 0 the state is exactly the canonical zero-debias state (z_0 = 0), and
``average`` holds the case's running statistics until the first update. A case asking for a
plain EMA therefore matches the oracle run with zero_debias on: declared, not hidden.

Unsupported: epsilon outside the sqrt or as a max; the cumulative rule; the num_updates schedule;
a case resuming from num_updates > 0 (hidden / counter of a half-debiased average are not in the
canonical state); updating running statistics in inference mode. Batch moments are not exposed.

Speed: one jitted step per (axes, create_scale, create_offset) runs both modes through
``lax.cond``; decay and eps are traced scalars, so cases of one input shape share a program.
"""

from __future__ import annotations

import functools

from .common import (JaxAdapter, JitCache, bessel_matters, case_in, common_unsupported, empty_batch_update,
                          jax_device, load_jax, put, put_state, to_numpy, updates_outside_training,
                          updates_with)
from ..base import Deviation, MatchesVariant, Mismatches, variant

HAIKU_EMA_SOURCE = "https://github.com/google-deepmind/dm-haiku/blob/main/haiku/_src/moving_averages.py"
HAIKU_BATCHNORM_SOURCE = "https://github.com/google-deepmind/dm-haiku/blob/main/haiku/_src/batch_norm.py"
EMA_NAMES = ("batch_norm/~/mean_ema", "batch_norm/~/var_ema")


@functools.lru_cache(maxsize=None)
def load_haiku():
    load_jax()
    import haiku

    return haiku


def build_step(reduce_axes: tuple[int, ...], create_scale: bool, create_offset: bool):
    """A pure step: (params, state, x, training, decay, eps) -> (y, state after)."""
    jax, hk = load_jax(), load_haiku()

    def forward(x, is_training, decay, eps):
        layer = hk.BatchNorm(create_scale, create_offset, decay_rate=decay, eps=eps, axis=list(reduce_axes))
        return layer(x, is_training=is_training)

    transformed = hk.transform_with_state(forward)

    def step(params, state, x, training, decay, eps):
        def run(is_training):
            return lambda s: transformed.apply(params, s, None, x, is_training, decay, eps)

        return jax.lax.cond(training, run(True), run(False), state)

    return step


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


def _plain_ema_updated(case, device) -> bool:
    return not case.config.running_stats.zero_debias and updates_with(case, min_count=1)


def _as_haiku_computes(case):
    """The oracle's variant: zero-debiased EMA and, where asked for Bessel, the biased variance."""
    return variant(case, running_stats={"zero_debias": True, "variance": "biased"})


EMPTY_BATCH_POISONS_EMA = Deviation(
    name="haiku-empty-batch-nan-ema",
    applies_to="a training step with N == 0 that updates the running statistics",
    applies=empty_batch_update,
    behaviour=Mismatches(("y", "running_mean", "running_var", "num_updates"),
                         "running statistics become NaN, the counter advances, later eval y is NaN"),
    explanation="the moments of an empty batch are NaN (0/0) and are folded into both EMAs, whose counter "
                "advances (the model keeps the state and num_updates unchanged for N == 0)",
    link=HAIKU_EMA_SOURCE,
)

UNCLAMPED_FAST_VARIANCE_CASES = (
    "degenerate/cancellation_float32_1e4", "degenerate/cancellation_float64_1e8",
    "degenerate/large_constant_channel", "degenerate/huge_mixed_sign_float32",
    "momentum/decay_0.5_bessel_n2_factor2", "momentum/decay_0.9_biased_n2")

UNCLAMPED_FAST_VARIANCE = Deviation(
    name="haiku-unclamped-one-pass-variance",
    applies_to="batches whose mean is large against their spread, or whose squares overflow: "
               + ", ".join(UNCLAMPED_FAST_VARIANCE_CASES),
    applies=case_in(*UNCLAMPED_FAST_VARIANCE_CASES),
    behaviour=Mismatches(("y", "running_mean", "running_var"),
                         "y and the running statistics are wrong or NaN (one-pass variance, not clamped)"),
    explanation="var = mean(x^2) - mean(x)^2 with no clamp at 0: 1e4 + N(0,1) in float32 gives var 8 or "
                "-4.6 (NaN y), 1e8 + N(0,1) in float64 gives -6, a constant channel of 1e4 gives -16 "
                "(NaN y), float32 inputs ~1e37 give inf - inf = NaN, N=2 float32 batches are off by "
                "~2.4e3 ulp; running_mean differs only by the zero-debiasing declared elsewhere",
    link=HAIKU_BATCHNORM_SOURCE,
)

HALF_SQUARES_OVERFLOW = Deviation(
    name="haiku-float16-squares-overflow",
    applies_to="float16 inputs near 1.5e4 (degenerate/float16_near_overflow)",
    applies=case_in("degenerate/float16_near_overflow"),
    behaviour=Mismatches(("y", "running_mean", "running_var"), "y and running_var are NaN"),
    explanation="moments are computed in the input dtype: x^2 ~2.4e8 overflows float16 (max 65504), so "
                "var = inf - inf = NaN; flax promotes to float32 and passes",
    link=HAIKU_BATCHNORM_SOURCE,
)

HALF_PRECISION_MOMENTS = Deviation(
    name="haiku-half-precision-moments",
    applies_to="float16 / bfloat16 inputs with a training update",
    applies=lambda case, device: case.config.input_dtype in ("float16", "bfloat16") and updates_with(case),
    behaviour=Mismatches(("running_mean", "running_var"),
                         "running statistics carry float16 / bfloat16 rounding of the batch moments"),
    explanation="hk.BatchNorm takes jnp.mean of the half-precision input, so the batch mean and variance are "
                "rounded to the input dtype (bfloat16 mean 1.0859 for 1.0871, ~2.5e4 float32 ulp) before "
                "they enter the float32 running statistics; y stays within the half-precision tolerance",
    link=HAIKU_BATCHNORM_SOURCE,
)

ALWAYS_ZERO_DEBIASED = Deviation(
    name="haiku-always-zero-debiased",
    applies_to="plain-EMA cases with a training update (haiku's BatchNorm EMA is zero-debiased, biased variance)",
    applies=_plain_ema_updated,
    behaviour=MatchesVariant("matches the oracle with zero_debias on and a biased running variance",
                             _as_haiku_computes),
    explanation="hk.BatchNorm builds hk.ExponentialMovingAverage(decay_rate) with its default "
                "zero_debias=True and no way to turn it off: after the first update the running stats "
                "equal the batch stats whatever the initial ones; the variance folded in is the biased one",
    link=HAIKU_BATCHNORM_SOURCE,
)

BIASED_RUNNING_VARIANCE = Deviation(
    name="haiku-biased-running-variance",
    applies_to="zero-debias cases asking for a Bessel-corrected running variance (N >= 2, decay < 1)",
    applies=lambda case, device: bessel_matters(case),
    behaviour=MatchesVariant("matches the oracle with a biased running variance",
                             lambda case: variant(case, running_stats={"variance": "biased"})),
    explanation="hk.BatchNorm folds the biased batch variance E[x^2] - E[x]^2 into var_ema",
    link=HAIKU_BATCHNORM_SOURCE,
)


class HaikuAdapter(JaxAdapter):
    """haiku.BatchNorm (dm-haiku) applied through hk.transform_with_state."""

    name = "haiku"
    framework = "dm-haiku"
    requires = ("jax", "haiku")
    deviations = (EMPTY_BATCH_POISONS_EMA, UNCLAMPED_FAST_VARIANCE, HALF_SQUARES_OVERFLOW, HALF_PRECISION_MOMENTS,
                  ALWAYS_ZERO_DEBIASED, BIASED_RUNNING_VARIANCE)
    notes = ("params/state built from the case (EMA hidden = counter = 0, average = running stats); "
             "zero-debiasing is always on; training without update keeps the old state")

    def __init__(self):
        self._steps = JitCache(build_step)

    def supports(self, case, device):
        reason = common_unsupported(case, "hk.BatchNorm")
        if reason:
            return reason
        if case.initial_state.num_updates:
            return ("hk.BatchNorm's EMA state (hidden, counter) of a zero-debiased average resumed after "
                    f"{case.initial_state.num_updates} updates is not determined by the running statistics")
        if updates_outside_training(case):
            return "hk.BatchNorm updates its EMAs only when is_training=True (normalizing with batch moments)"
        return None

    def run(self, case, device):
        config, where = case.config, jax_device(device)
        reduce_axes = tuple(a for a in range(case.rank) if a != config.channel_axis)
        step_fn = self._steps.get(reduce_axes, config.scale, config.center)
        params, state = build_params_and_state(case, where)
        decay, eps = float(config.running_stats.decay), float(config.effective_epsilon)
        results = []
        for step in case.steps:
            x = put(step.x, config.input_dtype, where)
            y, state_after = step_fn(params, state, x, step.is_training, decay, eps)
            if step.update_running_stats:
                state = state_after
            mean_ema, var_ema = (state[name] for name in EMA_NAMES)
            results.append({"y": to_numpy(y), "running_mean": to_numpy(mean_ema["average"]).reshape(-1),
                            "running_var": to_numpy(var_ema["average"]).reshape(-1),
                            "num_updates": int(mean_ema["counter"])})
        return results
