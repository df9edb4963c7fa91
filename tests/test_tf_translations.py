"""Issue 19, item 3 ("translate before refusing"): behaviours a TensorFlow user reaches by a reshape
are translated by the adapters, not declared unsupported.

* tf.fused_batch_norm takes 4-D / 5-D x only; a rank-2 / rank-3 x is reshaped to 4-D with unit
  spatial axes, as tf-slim's ``batch_norm(fused=True)`` does for rank 2, and y reshaped back.
* tf.nn computes weighted moments with ``tf.nn.weighted_moments`` and per-sample weights
  shaped ``[B, 1, .., 1]``, as tf-slim's ``batch_weights`` path does.

Each test fails without its translation (the cell would be unsupported, or the weights ignored).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import in_framework_process, requires

pytestmark = [requires("tensorflow"), *in_framework_process("tensorflow")]

from bnconform.adapters.tensorflow.fused import TfFusedBatchNormAdapter, fused_layout  # noqa: E402
from bnconform.adapters.tensorflow.nn import TfNnAdapter  # noqa: E402
from bnconform.caseformat.validation import load_case  # noqa: E402
from bnconform.judging.judge import cannot_express, judge  # noqa: E402
from bnconform.reference.moments import batch_moments, weighted_moments  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _case(name: str):
    return load_case(ROOT / "cases" / f"{name}.json")


@pytest.mark.parametrize("shape, axis, expected", [
    ([6, 3], 1, ([6, 1, 1, 3], "NHWC")),  # tf-slim: [-1, 1, 1, C]
    ([4, 5, 3], 2, ([4, 5, 1, 3], "NHWC")),
    ([4, 3, 5], 1, ([4, 3, 5, 1], "NCHW")),
    ([0, 3], 1, ([0, 1, 1, 3], "NHWC")),  # an empty batch keeps its explicit zero (no -1 to infer)
    ([2, 3, 4, 5], 1, ([2, 3, 4, 5], "NCHW")),  # ranks 4 and 5 pass as they are
    ([2, 4, 5, 6, 3], 4, ([2, 4, 5, 6, 3], "NDHWC")),
    ([3, 6], 0, ([3, 6], None)),  # channel axis 0: no data_format names it
])
def test_fused_layout_appends_unit_spatial_axes(shape, axis, expected):
    assert fused_layout(shape, axis) == expected


@pytest.mark.parametrize("name", [
    "formulas/rank2_nc_train", "formulas/rank2_nc_eval", "formulas/float16_nc_train",
    "formulas/rank3_ncl_train", "formulas/rank3_nlc_train", "formulas/rank3_nlc_eval",
    "gradients/rank2_nc_train", "gradients/rank2_nc_eval", "gradients/rank3_ncl_train",
    "gradients/rank3_nlc_train", "gradients/train_then_eval",
])
def test_fused_low_rank_cases_are_judged_and_match_the_oracle(name):
    """Before the translation every one was "cannot express these input ranks. Expected: [4, 5]"."""
    case = _case(name)
    assert case.rank in (2, 3)
    assert cannot_express(TfFusedBatchNormAdapter(), case, "cpu") is None
    verdict = judge(TfFusedBatchNormAdapter(), case, "cpu")
    assert verdict.status == "pass", verdict.detail


def test_fused_rank3_dx_comes_back_in_the_input_shape():
    case = _case("gradients/rank3_nlc_train")
    results = TfFusedBatchNormAdapter().run(case, "cpu")
    assert results[0]["y"].shape == results[0]["dx"].shape == case.steps[0].x.shape


@pytest.mark.parametrize("name, deviation", [
    # the float32 squares overflow in the kernel: y = beta, dx = dgamma = 0
    ("degenerate/huge_mixed_sign_float32", "fused-bn-float32-variance-overflow"),
    ("gradients/huge_mixed_sign_float32_train", "fused-bn-float32-variance-overflow"),
    ("degenerate/n0_rank2_train", "fused-bn-empty-batch-nan-running-stats"),
    # 4-D / 5-D x get no reshape: the kernel's folded dx of an empty 5-D batch still shows
    ("gradients/n0_rank5_train", "fused-bn-empty-rank5-dx-folded"),
])
def test_fused_findings_the_translation_reaches_are_declared(name, deviation):
    verdict = judge(TfFusedBatchNormAdapter(), _case(name), "cpu")
    assert verdict.status == "deviation" and deviation in verdict.deviations, verdict.detail


def test_fused_still_refuses_what_no_reshape_reaches():
    reason = cannot_express(TfFusedBatchNormAdapter(), _case("formulas/rank2_nc_train_biased"), "cpu")
    assert reason.startswith("tf.fused_batch_norm always uses a Bessel-corrected running variance")


def test_nn_weighted_case_is_judged():
    """Before the translation: "tf.nn cannot express these model extensions"."""
    case = _case("weighted/train_without_update")
    assert "sample_weights" in case.extensions
    verdict = judge(TfNnAdapter(), case, "cpu")
    assert verdict.status == "pass", verdict.detail


def test_nn_weighted_gradients_match_the_oracle():
    """dx, dgamma, dbeta through tf.nn.weighted_moments (the weights are constants to the tape),
    within the case's stored tolerances. Run directly: the case's step updates running statistics,
    which tf.nn does not keep, and how such steps are judged is not this test's subject."""
    case = _case("gradients/weighted_train")
    step = case.steps[0]
    got = TfNnAdapter().run(case, "cpu")[0]
    for name in ("y", "batch_mean", "batch_var", "dx", "dgamma", "dbeta"):
        tol = step.tolerance[name]
        np.testing.assert_allclose(got[name], step.expected[name], rtol=tol["rtol"], atol=tol["atol"], err_msg=name)


@pytest.mark.parametrize("name", ["weighted/zero_weights_exclude_samples", "weighted/rank4_nhwc_broadcast",
                                  "weighted/single_weighted_sample_spatial"])
def test_nn_batch_moments_are_the_weighted_ones(name):
    """The reported moments are the canonical weighted moments, far from the plain ones."""
    case = _case(name)
    step = case.steps[0]
    got = TfNnAdapter().run(case, "cpu")[0]
    mean, var = weighted_moments(step.x, step.sample_weights, case.config.channel_axis)
    plain_mean, _ = batch_moments(step.x, case.config.channel_axis)
    np.testing.assert_allclose(got["batch_mean"], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["batch_var"], var, rtol=1e-5, atol=1e-6)
    assert np.max(np.abs(plain_mean - mean)) > 1e-2
