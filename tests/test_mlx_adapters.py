"""Fast checks of the MLX adapter's translation (skipped when MLX is not installed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import in_framework_process, requires

pytestmark = [requires("mlx"), *in_framework_process("mlx")]

from bnconform.adapters.mlx.nn import MlxBatchNormAdapter  # noqa: E402
from bnconform.judging.judge import judge  # noqa: E402
from bnconform.caseformat.validation import load_case  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "cases"


def _case(name: str):
    return load_case(CASES / f"{name}.json")


def test_importing_the_adapter_module_does_not_import_mlx():
    code = "import sys, bnconform.adapters.mlx.nn; print('mlx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_module_holds_the_case_state_and_the_new_statistic_weight():
    case = _case("momentum/decay_0.9_bessel_3steps")
    module = MlxBatchNormAdapter()._module(case)
    assert module.momentum == pytest.approx(0.1)
    np.testing.assert_array_equal(np.array(module.running_var), case.initial_state.running_var)
    np.testing.assert_array_equal(np.array(module.weight), case.initial_state.gamma)


def test_three_step_momentum_case_passes():
    verdict = judge(MlxBatchNormAdapter(), _case("momentum/decay_0.9_bessel_3steps"), "cpu")
    assert verdict.status == "pass", verdict.detail
    assert "running_var" in verdict.compared


@pytest.mark.parametrize("name", ["formulas/float64_nchw_train", "formulas/rank2_channel_axis0_train"])
def test_channels_first_layouts_move_to_the_last_axis_and_back(name):
    case = _case(name)
    results = MlxBatchNormAdapter().run(case, "cpu")
    assert results[0]["y"].shape == case.steps[0].x.shape
    assert results[0]["y"].dtype == case.steps[0].x.dtype  # float64 stays float64 (MLX would narrow it)
    assert judge(MlxBatchNormAdapter(), case, "cpu").status == "pass"


def test_gradients_of_training_then_inference_steps_pass():
    verdict = judge(MlxBatchNormAdapter(), _case("gradients/train_train_eval_bessel"), "cpu")
    assert verdict.status == "pass", verdict.detail
    assert {"dx", "dgamma", "dbeta"} <= set(verdict.compared)


@pytest.mark.parametrize("name, deviation", [("degenerate/n1_rank2_train", "single-value-per-channel-raises"),
                                             ("epsilon/eps_0_train", "eps-zero-rejected"),
                                             ("degenerate/n0_rank2_train", "empty-batch-nan-running-stats"),
                                             ("formulas/bfloat16_nc_train", "half-batch-statistics")])
def test_declared_deviations_are_observed(name, deviation):
    verdict = judge(MlxBatchNormAdapter(), _case(name), "cpu")
    assert verdict.status == "deviation", verdict.detail
    assert deviation in verdict.deviations


def test_rank5_is_unsupported_with_the_reason():
    verdict = judge(MlxBatchNormAdapter(), _case("formulas/rank5_ndhwc_eval"), "cpu")
    assert verdict.status == "unsupported" and "input ranks" in verdict.detail
