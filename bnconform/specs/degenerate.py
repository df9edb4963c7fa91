"""degenerate: batches where the textbook formula is on its edge.

One sample, empty batches, constant channels, NaN/Inf, catastrophic cancellation, values near
the dtype's overflow, a single channel, and these combined with the running-statistics knobs.
"""

from __future__ import annotations

import numpy as np

from ..caseformat.model import Config, RunningStats
from .spec import EVAL, TRAIN, Spec, normal, per_step

FAMILY = "degenerate"


def _with_channel(value):
    """Input maker: N(0.5, 1) everywhere, channel 1 (axis 1) set to ``value``."""
    def make(rng, shape):
        x = rng.normal(0.5, 1.0, size=shape)
        x[:, 1] = value
        return x
    return make


def _one_sample():
    for name, shape, variance in (("n1_rank2", (1, 4), "bessel"), ("n1_rank2_biased", (1, 4), "biased"),
                                  ("n1_rank4_1x1", (1, 4, 1, 1), "bessel")):
        yield Spec(FAMILY, f"{name}_train",
                   f"One value per channel (shape {list(shape)}) in training: x - mean = 0, so y = beta "
                   f"exactly and the batch variance is 0; canonical Bessel factor is N/max(N-1,1) = 1. "
                   f"Implementations raise (torch), or divide 0/0 and store NaN in the running variance.",
                   Config(channel_axis=1, running_stats=RunningStats(variance=variance)), [shape],
                   (TRAIN, EVAL), normal(0.3, 1.0))
    for name, shape in (("n1_rank4_spatial", (1, 3, 4, 4)), ("n1_rank3_length5", (1, 3, 5))):
        yield Spec(FAMILY, f"{name}_train",
                   f"One sample with spatial extent (shape {list(shape)}) is a valid batch: N = H*W > 1 per "
                   f"channel; an implementation that rejects batch size 1 outright raises here wrongly.",
                   Config(channel_axis=1), [shape], (TRAIN, EVAL), normal(0.3, 1.0))


def _empty():
    for name, shape, steps in (("n0_rank2_train", (0, 3), (TRAIN, EVAL)),
                               ("n0_rank4_train", (0, 3, 2, 2), (TRAIN, EVAL)),
                               ("n0_rank2_eval", (0, 3), (EVAL,))):
        yield Spec(FAMILY, name,
                   f"Empty batch (shape {list(shape)}): y is empty, batch moments are undefined, and the "
                   f"running state must stay unchanged (num_updates too); 0/0 moments would write NaN "
                   f"into the running statistics.",
                   Config(channel_axis=1), [shape], steps, normal())
    yield Spec(FAMILY, "n0_cumulative_between",
               "Cumulative average across an empty batch: the empty batch must not count, so the third "
               "batch gets weight 1/3; counting it (weight 1/4) skews every later running statistic.",
               Config(channel_axis=1, running_stats=RunningStats(rule="cumulative", decay=None)),
               [(4, 3), (0, 3), (4, 3), (4, 3)], (TRAIN, TRAIN, TRAIN, EVAL), normal(1.0, 2.0))
    yield Spec(FAMILY, "n0_zero_debias_between",
               "Zero-debiased EMA across an empty batch: the debias power t must not advance, else the "
               "next running stats are scaled by (1-d^2)/(1-d^3).",
               Config(channel_axis=1, running_stats=RunningStats(decay=0.9, zero_debias=True)),
               [(4, 3), (0, 3), (4, 3)], (TRAIN, TRAIN, EVAL), normal(1.0, 2.0))
    yield Spec(FAMILY, "n0_zero_debias_then_train",
               "Zero-debiased EMA: a batch, an empty batch, another batch, then eval: after the third step the "
               "running stats divide by 1 - d^2, not 1 - d^3 (the empty batch must not advance t), so an "
               "implementation that counts it normalizes the eval step with statistics about 0.7x too small.",
               Config(channel_axis=1, running_stats=RunningStats(decay=0.9, zero_debias=True)),
               [(4, 3), (0, 3), (4, 3), (4, 3)], (TRAIN, TRAIN, TRAIN, EVAL), normal(1.0, 2.0))


def _constant():
    yield Spec(FAMILY, "constant_channel_eps_1e-5",
               "Channel 1 is constant 3.0 (zero variance), eps 1e-5: its output is exactly beta; an "
               "implementation whose mean is off by one rounding amplifies that by 1/sqrt(eps) ~ 316.",
               Config(channel_axis=1), [(8, 3)], (TRAIN, EVAL), _with_channel(3.0))
    yield Spec(FAMILY, "constant_channel_eps_0",
               "Channel 1 constant with eps = 0: (x - mean)/sqrt(0) = 0/0, canonically NaN on that channel "
               "only (IEEE); returning beta, 0 or Inf there, or NaN elsewhere, is a deviation.",
               Config(channel_axis=1, epsilon=0.0), [(8, 3)], (TRAIN,), _with_channel(3.0))
    yield Spec(FAMILY, "large_constant_channel",
               "Channel 1 is constant 1e4 + 0.1 (float32): a one-pass E[x^2]-E[x]^2 variance gives a "
               "nonzero or negative value and y != beta on that channel (pytorch#5410).",
               Config(channel_axis=1), [(8, 3)], (TRAIN,), _with_channel(1e4 + 0.1))


def _non_finite():
    for name, value in (("nan", np.nan), ("pos_inf", np.inf), ("neg_inf", -np.inf)):
        def make(rng, shape, v=value):
            x = rng.normal(0.5, 1.0, size=shape)
            x[2, 1] = v
            return x
        yield Spec(FAMILY, f"{name}_in_one_channel",
                   f"One {name} value in channel 1: that channel's statistics and outputs become NaN, the "
                   f"other channels must be exactly as without it; a fused reduction that mixes channels "
                   f"leaks NaN into them.",
                   Config(channel_axis=1), [(6, 3)], (TRAIN, EVAL), make)


def _precision():
    yield Spec(FAMILY, "cancellation_float32_1e4",
               "float32 inputs 1e4 + N(0,1): E[x^2] - E[x]^2 in float32 loses every digit (ulp of 1e8 is 8), "
               "giving variance garbage, negative values or NaN; two-pass or Welford gets var ~ 1.",
               Config(channel_axis=1), [(32, 3)], (TRAIN, TRAIN, EVAL), normal(1e4, 1.0))
    yield Spec(FAMILY, "cancellation_float32_1e4_nhwc",
               "The same float32 1e4 + N(0,1) cancellation at rank 4, channels last, where fused kernels take "
               "over (tf_keras' fused path under XLA computes E[x^2] - E[x]^2 in float32: variance off by "
               "~50%, y NaN; tensorflow#118701); a two-pass or Welford variance gets var ~ 1.",
               Config(channel_axis=3), [(8, 2, 2, 3)], (TRAIN, TRAIN, EVAL), normal(1e4, 1.0))
    yield Spec(FAMILY, "cancellation_float64_1e8",
               "float64 inputs 1e8 + N(0,1): E[x^2]-E[x]^2 in float64 keeps only ~0 digits of var (ulp of "
               "1e16 is 2); a float32 path cannot represent the spread at all.",
               Config(channel_axis=1, input_dtype="float64", param_dtype="float64"), [(32, 3)], (TRAIN,),
               normal(1e8, 1.0))
    yield Spec(FAMILY, "float16_near_overflow",
               "float16 inputs near +-6e4 (max 65504): the variance (~3e9) overflows float16, so moments "
               "must be accumulated in float32; a float16 accumulator gives Inf and y = 0 or NaN.",
               Config(channel_axis=1, input_dtype="float16", param_dtype="float32"), [(8, 3)], (TRAIN,),
               lambda rng, shape: rng.choice([-1.0, 1.0], size=shape) * rng.uniform(3e4, 6.4e4, size=shape))
    yield Spec(FAMILY, "huge_mixed_sign_float32",
               "float32 inputs of magnitude ~1e37 with mixed signs: squares overflow float32 (max 3.4e38), "
               "so a float32 variance is Inf and y collapses to beta; float64 accumulation is exact enough.",
               Config(channel_axis=1), [(8, 3)], (TRAIN,),
               lambda rng, shape: rng.choice([-1.0, 1.0], size=shape) * rng.uniform(1e36, 3e37, size=shape))
    yield Spec(FAMILY, "huge_mixed_sign_float64",
               "float64 inputs of magnitude ~1e150 with mixed signs: squares (~1e300) stay finite in float64; "
               "an implementation that scales or squares twice overflows to Inf.",
               Config(channel_axis=1, input_dtype="float64", param_dtype="float64"), [(8, 3)], (TRAIN,),
               lambda rng, shape: rng.choice([-1.0, 1.0], size=shape) * rng.uniform(1e149, 1e150, size=shape))


def _single_channel():
    yield Spec(FAMILY, "c1_rank2",
               "A single channel (C = 1): per-channel and per-tensor statistics coincide, but parameter "
               "shapes of length 1 must still broadcast along the channel axis.",
               Config(channel_axis=1), [(7, 1)], (TRAIN, EVAL), normal(0.5, 1.5))
    yield Spec(FAMILY, "c1_rank4_nhwc",
               "A single channel, channels-last rank 4: an implementation that squeezes the channel axis "
               "reduces over the wrong dims or fails on shape.",
               Config(channel_axis=3), [(2, 3, 3, 1)], (TRAIN, EVAL), normal(0.5, 1.5))


def _with_momentum():
    yield Spec(FAMILY, "n1_then_eval_cumulative",
               "One-sample batch with the cumulative rule, then a normal batch, then eval: the first "
               "update stores running var 0 (Bessel factor 1 at N = 1), not NaN; NaN would persist forever.",
               Config(channel_axis=1, running_stats=RunningStats(rule="cumulative", decay=None)),
               [(1, 3), (6, 3), (4, 3)], (TRAIN, TRAIN, EVAL), normal(0.5, 1.0))
    yield Spec(FAMILY, "nan_batch_then_clean_batch",
               "A NaN in channel 1 of the first batch poisons that channel's running stats (EMA keeps it); "
               "the next clean batch cannot repair it, and other channels stay clean.",
               Config(channel_axis=1, running_stats=RunningStats(decay=0.5)), [(6, 3)], (TRAIN, TRAIN, EVAL),
               _nan_in_first_step)


def _inf_then_cumulative():
    """Found by `bnconform fuzz` on torch.nn (promoted): the cumulative rule's form decides what an
    infinite running mean becomes."""
    yield Spec(FAMILY, "inf_batch_then_clean_batch_cumulative",
               "+Inf in channel 1 of the first batch under the cumulative rule: that channel's batch mean and "
               "running mean become +Inf (its variance NaN), then a clean batch folds in with weight 1/2: "
               "r + (b - r) / 2 = Inf + (-Inf) = NaN (IEEE, the model's form), where the equal "
               "(1 - 1/2) r + b / 2 keeps +Inf; other channels stay exact.",
               Config(channel_axis=1, running_stats=RunningStats(rule="cumulative", decay=None)), [(6, 3)],
               (TRAIN, TRAIN, EVAL), _inf_in_first_step)


def _inf_then_ema():
    """Found by `bnconform fuzz` on tf_keras (promoted): the EMA's form decides what an infinite
    running mean becomes."""
    yield Spec(FAMILY, "inf_batch_then_clean_batch",
               "+Inf in channel 1 of the first batch under the EMA rule (decay 0.5): that channel's batch mean "
               "and running mean become +Inf (its variance NaN), then a clean batch: d r + (1 - d) b = Inf "
               "stays +Inf (the model's form), where the equal r - (r - b)(1 - d) gives Inf - Inf = NaN; "
               "other channels stay exact. pos_inf_in_one_channel updates only once, so it cannot see this.",
               Config(channel_axis=1, running_stats=RunningStats(decay=0.5)), [(6, 3)], (TRAIN, TRAIN),
               _inf_in_first_step)


@per_step
def _inf_in_first_step(rng, shape, index):
    """Channel 1 of the first batch holds one +Inf; later batches are clean."""
    x = rng.normal(0.5, 1.0, size=shape)
    if index == 0:
        x[0, 1] = np.inf
    return x


@per_step
def _nan_in_first_step(rng, shape, index):
    """Channel 1 of the first batch holds one NaN; later batches are clean."""
    x = rng.normal(0.5, 1.0, size=shape)
    if index == 0:
        x[0, 1] = np.nan
    return x


def specs():
    yield from _one_sample()
    yield from _empty()
    yield from _constant()
    yield from _non_finite()
    yield from _precision()
    yield from _single_channel()
    yield from _with_momentum()
    yield from _inf_then_cumulative()
    yield from _inf_then_ema()
