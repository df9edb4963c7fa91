"""Findings of ``tf.nn.moments`` + ``tf.nn.batch_normalization`` themselves, declared alike by
every row built on them (tf.nn, which calls them per step; tf.nn+ema, which adds the moving
averages), each under its row's own name.

The primitives compute float16 moments in float32 and cast them back, bfloat16 and float32 ones
in their own dtype (nn_impl.py), and batch_normalization returns x * inv + (offset - mean * inv)
in the dtype of its operands.
"""

from __future__ import annotations

import numpy as np

from ...caseformat.dtypes import quantize
from ...judging.compare import output_mismatch
from ...judging.selectors import (Selector, half_params_rounded_mean_shows, input_dtype_in, mean_far_from_spread,
                                  param_dtype_in, squares_overflow, training_step, where)
from ..base import Deviation, Mismatches
from .common import BATCH_NORMALIZATION_RETURN_LINE

NN_SOURCE = "https://github.com/tensorflow/tensorflow/blob/master/tensorflow/python/ops/nn_impl.py"

# tf.nn.moments squares float16 input in float32 but returns float16 (variances overflow at 65504);
# float32 and bfloat16 input it squares in its own dtype (both overflow near 3.4e38).
MOMENTS_OVERFLOW = ((input_dtype_in("float16") & squares_overflow("float16"))
                    | (input_dtype_in("float32", "bfloat16") & squares_overflow("float32")))


# The bfloat16 batch mean of offset data, rounded to bfloat16 (bfloat16_moments_shift_y).
BFLOAT16_MEAN_SHIFT = (input_dtype_in("bfloat16") & param_dtype_in("float32") & training_step(1024)
                       & mean_far_from_spread(2))


def moments_overflow(name: str, outputs: tuple[str, ...]) -> Deviation:
    return Deviation(
        name=name, kind="precision", applies=MOMENTS_OVERFLOW,
        behaviour=Mismatches(outputs, "the batch variance overflows to Inf, so y collapses to beta and dx = dgamma = 0"),
        explanation="tf.nn.moments squares deviations in the input dtype, float32 range for float32 and "
                    "bfloat16 (float16 inputs: computed in float32, then cast back to float16, max 65504), so "
                    "the variance is Inf where float64 is finite",
        link=NN_SOURCE)


def bfloat16_moments_shift_y(name: str, link: str = NN_SOURCE) -> Deviation:
    # From 2.16 (float32 accumulation, bfloat16_mean_accumulated_in_bfloat16): before, the mean itself is off.
    return Deviation(
        name=name, kind="dtype",
        applies=BFLOAT16_MEAN_SHIFT,
        behaviour=Mismatches(("y",), "y normalized with a batch mean computed in bfloat16"),
        explanation="tf.nn.moments computes bfloat16 moments in bfloat16 (float16 is computed in float32 and "
                    "cast back), so the mean of offset data carries bfloat16 rounding (ulp 0.0156 at 3): in "
                    "formulas/bfloat16_nhwc_n1024_offset_train(_biased) y is off by 0.0148 at elements near 0 "
                    "(-0.0469 for -0.0616), where a float32 reduction rounded once stays within its element's "
                    "bound; the whole-output tolerance let it pass",
        link=link, versions=">=2.16")


# Measured on 2.12.1, 2.13.1, 2.14.1 and 2.15.1 (CPU): the cases whose results the bfloat16 running sum
# moves beyond their bounds (a one-step case of a stateless row carries its case's id and "#step<i>").
BFLOAT16_ACCUMULATION_CASES = ("formulas/bfloat16_nhwc_n1024_offset_train", "formulas/bfloat16_nhwc_n1024_offset_train_biased",
                               "formulas/bfloat16_nlc_n512_offset_batch_no_update",
                               "formulas/scale_on_center_off_nlc_bfloat16_train",
                               "formulas/scale_on_center_off_nlc_bfloat16_train_biased")
BFLOAT16_ACCUMULATION_SHOWS = Selector("the cases " + ", ".join(BFLOAT16_ACCUMULATION_CASES),
                                       lambda case, device: case.id.partition("#")[0] in BFLOAT16_ACCUMULATION_CASES)


def bfloat16_mean_accumulated_in_bfloat16(name: str, outputs: tuple[str, ...]) -> Deviation:
    """TensorFlow < 2.16: the CPU Mean kernel sums bfloat16 in a bfloat16 accumulator (pull request
    62051 added the float32 one), so tf.nn.moments' mean, and the variance built on it, drift."""
    return Deviation(
        name=name, kind="precision", applies=BFLOAT16_ACCUMULATION_SHOWS,
        behaviour=Mismatches(outputs, "the batch mean and variance of bfloat16 input are running sums rounded to "
                                      "bfloat16 at every addition, and y is normalized with them"),
        explanation="before TensorFlow 2.16 the CPU Mean kernel behind tf.nn.moments accumulates bfloat16 input in "
                    "a bfloat16 sum, rounded at every addition (the Sum kernel already used float32; this pull request "
                    "gave Mean the same float32 accumulator, first released in 2.16). Measured on 2.12.1 to 2.15.1: "
                    "the mean equals a bfloat16 running sum (every addition rounded) divided by N; once the sum reaches 2048 an "
                    "addition of ~4 rounds away, so N=1024 samples of mean 4.07 give 2.016 "
                    "(formulas/bfloat16_nhwc_n1024_offset_train, batch_var 4.78 for 2.19) and N=512 of mean 3.00 "
                    "give 2.50; at N=20 the mean is 2.6 bfloat16 ulps off (0.4219 for 0.4169), moving y near 0 "
                    "by 0.006 (formulas/scale_on_center_off_nlc_bfloat16_train); 2.16.2 returns the exact mean "
                    "rounded once",
        link="https://github.com/tensorflow/tensorflow/pull/62051", versions="<2.16")


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


def _rounded(values, dtype: str) -> np.ndarray:
    return quantize(np.asarray(values, np.float64), dtype).astype(np.float64)


def _statistics_before(case, index: int) -> tuple:
    """The running (mean, variance) the case expects before step ``index``."""
    if index == 0:
        return case.initial_state.running_mean, case.initial_state.running_var
    before = case.steps[index - 1].expected
    return before["running_mean"], before["running_var"]


def tf_half_input_y(case, index: int) -> np.ndarray | None:
    """y of step ``index`` as tf.nn.moments + tf.nn.batch_normalization compute it for a half x with
    float32 parameters: the batch moments rounded to the half dtype (tf.nn.moments), then
    ``x * cast(inv, half) + cast(offset - mean * inv, half)`` with inv = rsqrt(var + eps) * scale in
    float32, each product and sum of the return line rounded to the half dtype. None where the
    step has no values or no batch moments to start from."""
    config, step = case.config, case.steps[index]
    half, x = config.input_dtype, np.asarray(step.x, np.float64)
    if x.size == 0:
        return None
    if step.is_training:
        mean, var = step.expected.get("batch_mean"), step.expected.get("batch_var")
        if mean is None or var is None:
            return None
        mean, var = _rounded(mean, half), _rounded(var, half)
    else:
        mean, var = (np.asarray(v, np.float64) for v in _statistics_before(case, index))
    shape = [1] * x.ndim
    shape[config.channel_axis] = -1
    with np.errstate(all="ignore"):
        inv = _rounded(1.0 / np.sqrt(_rounded(var + config.effective_epsilon, "float32")), "float32")
        if config.scale:
            inv = _rounded(inv * case.initial_state.gamma.astype(np.float64), "float32")
        shift = -_rounded(mean * inv, "float32")
        if config.center:
            shift = _rounded(case.initial_state.beta.astype(np.float64) + shift, "float32")
        scaled = _rounded(x * _rounded(inv, half).reshape(shape), half)
        return _rounded(scaled + _rounded(shift, half).reshape(shape), half)


@where("half input with float32 parameters where y computed in the half dtype (tf.nn.batch_normalization's "
       "return line) falls outside y's bounds")
def half_input_arithmetic_shows(case) -> bool:
    """Some step's :func:`tf_half_input_y` fails y as the judge would (bnconform.judging.compare)."""
    config = case.config
    if config.input_dtype not in ("float16", "bfloat16") or config.param_dtype != "float32":
        return False
    for index in range(len(case.steps)):
        y = tf_half_input_y(case, index)
        if y is not None and np.isfinite(y).all() and output_mismatch(case, index, "y", y) is not None:
            return True
    return False


def half_inputs_half_arithmetic(name: str) -> Deviation:
    return Deviation(
        name=name, kind="dtype", applies=half_input_arithmetic_shows & ~MOMENTS_OVERFLOW & ~BFLOAT16_MEAN_SHIFT,
        behaviour=Mismatches(("y",), "y computed as x * inv + (beta - mean * inv) in the half input dtype"),
        explanation="with float32 gamma / beta a half x still gets half arithmetic: tf.nn.batch_normalization "
                    "returns x * cast(inv, x.dtype) + cast(offset - mean * inv, x.dtype), so both terms are "
                    "rounded to the half dtype before they cancel, and tf.nn.moments has already cast the float16 "
                    "moments back to float16; the error is an ulp of |gamma| |x| / sigma, not of |y|. Offset "
                    "float16 data (mean 3 to 6, sigma 1) with a beta near 0: y is -0.03125 for -0.035132 in "
                    "formulas/float16_nc_n2048_offset_train (max abs err 0.0084, up to 7.9x an element's bound, "
                    "631 of 4096 elements outside) and 0.01953 for 0.01556 in "
                    "formulas/float16_ncdhw_n1024_offset_train (0.0068, up to 26x, 203 of 2048), where float32 "
                    "arithmetic rounded once to float16 stays within every bound",
        link=BATCH_NORMALIZATION_RETURN_LINE)
