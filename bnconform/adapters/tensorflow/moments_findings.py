"""Findings of ``tf.nn.moments`` + ``tf.nn.batch_normalization`` themselves, declared alike by
every row built on them (tf.nn, which calls them per step; tf.nn+ema, which adds the moving
averages), each under its row's own name.

The primitives compute float16 moments in float32 and cast them back, bfloat16 and float32 ones
in their own dtype (nn_impl.py), and batch_normalization returns x * inv + (offset - mean * inv)
in the dtype of its operands.
"""

from __future__ import annotations

from ...judging.selectors import (half_params_rounded_mean_shows, input_dtype_in, mean_far_from_spread, param_dtype_in,
                                  squares_overflow, training_step)
from ..base import Deviation, Mismatches
from .common import BATCH_NORMALIZATION_RETURN_LINE

NN_SOURCE = "https://github.com/tensorflow/tensorflow/blob/master/tensorflow/python/ops/nn_impl.py"

# tf.nn.moments squares float16 input in float32 but returns float16 (variances overflow at 65504);
# float32 and bfloat16 input it squares in its own dtype (both overflow near 3.4e38).
MOMENTS_OVERFLOW = ((input_dtype_in("float16") & squares_overflow("float16"))
                    | (input_dtype_in("float32", "bfloat16") & squares_overflow("float32")))


def moments_overflow(name: str, outputs: tuple[str, ...]) -> Deviation:
    return Deviation(
        name=name, kind="precision", applies=MOMENTS_OVERFLOW,
        behaviour=Mismatches(outputs, "the batch variance overflows to Inf, so y collapses to beta and dx = dgamma = 0"),
        explanation="tf.nn.moments squares deviations in the input dtype, float32 range for float32 and "
                    "bfloat16 (float16 inputs: computed in float32, then cast back to float16, max 65504), so "
                    "the variance is Inf where float64 is finite",
        link=NN_SOURCE)


def bfloat16_moments_shift_y(name: str, link: str = NN_SOURCE) -> Deviation:
    return Deviation(
        name=name, kind="dtype",
        applies=input_dtype_in("bfloat16") & param_dtype_in("float32") & training_step(1024) & mean_far_from_spread(2),
        behaviour=Mismatches(("y",), "y normalized with a batch mean computed in bfloat16"),
        explanation="tf.nn.moments computes bfloat16 moments in bfloat16 (float16 is computed in float32 and "
                    "cast back), so the mean of offset data carries bfloat16 rounding (ulp 0.0156 at 3): in "
                    "formulas/bfloat16_nhwc_n1024_offset_train(_biased) y is off by 0.0148 at elements near 0 "
                    "(-0.0469 for -0.0616), where a float32 reduction rounded once stays within its element's "
                    "bound; the whole-output tolerance let it pass",
        link=link)


def half_parameters_half_arithmetic(name: str) -> Deviation:
    return Deviation(
        name=name, kind="dtype", applies=half_params_rounded_mean_shows,
        behaviour=Mismatches(("y", "batch_var"), "y and the batch variance computed from half moments in half "
                                               "arithmetic"),
        explanation="with gamma / beta in the input's half dtype nothing is float32: tf.nn.moments returns "
                    "half moments (float16: computed in float32 and cast back; bfloat16: computed in bfloat16) "
                    "and tf.nn.batch_normalization returns x * inv + (offset - mean * inv), inv = "
                    "rsqrt(var + eps) * scale, every product and sum rounded to the half dtype (x * inv ~ 140 "
                    "here, float16 ulp 0.125); measured eagerly: y off by 0.052 (float16) / 0.46 (bfloat16) "
                    "where float32 arithmetic rounded once is within 0.0008 / 0.0074 (found by bnconform fuzz); the "
                    "bfloat16 batch variance is 16 bfloat16 ulps off (0.0547 for 0.0508 in "
                    "formulas/bfloat16_params_offset_train), beyond 4 roundings of its own channel's variance",
        link=BATCH_NORMALIZATION_RETURN_LINE)
