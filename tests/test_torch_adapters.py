"""Fast checks of the torch adapters' translation logic (skipped when torch is not installed)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import in_framework_process, requires

pytestmark = [requires("torch"), *in_framework_process("torch")]

from bnconform.adapters.torch.common import from_channels_first, to_channels_first, to_tensor  # noqa: E402
from bnconform.adapters.torch.functional import TorchFunctionalAdapter  # noqa: E402
from bnconform.adapters.torch.nn import TorchModuleAdapter, momentum_for  # noqa: E402
from bnconform.judging.judge import judge  # noqa: E402
from bnconform.caseformat.validation import load_case  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "cases"


def _case(name: str):
    return load_case(CASES / f"{name}.json")


def test_decay_is_the_weight_on_the_old_statistic():
    config = _case("momentum/decay_0.9_bessel_3steps").config
    assert momentum_for(config) == pytest.approx(0.1)
    assert momentum_for(config.with_running(decay=0.99)) == pytest.approx(0.01)
    assert momentum_for(config.with_running(rule="cumulative", decay=None)) is None


@pytest.mark.parametrize("adapter_class", [TorchModuleAdapter, TorchFunctionalAdapter])
def test_three_step_momentum_case_passes(adapter_class):
    verdict = judge(adapter_class(), _case("momentum/decay_0.9_bessel_3steps"), "cpu")
    assert verdict.status == "pass", verdict.detail
    assert "running_var" in verdict.compared


def test_cached_module_is_reset_between_runs():
    adapter, case = TorchModuleAdapter(), _case("momentum/decay_0.5_bessel_3steps")
    first, second = adapter.run(case, "cpu"), adapter.run(case, "cpu")
    assert len(adapter._modules) == 1
    np.testing.assert_array_equal(first[-1]["running_var"], second[-1]["running_var"])
    assert second[-1]["num_updates"] == case.initial_state.num_updates + 3


@pytest.mark.parametrize("axis", [0, 2, 3])
def test_channel_axis_round_trips_the_layout(axis):
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    moved = to_channels_first(to_tensor(x, "float32", "cpu"), axis)
    assert moved.shape[1] == x.shape[axis]
    np.testing.assert_array_equal(from_channels_first(moved, axis).numpy(), x)


@pytest.mark.parametrize("name", ["formulas/rank4_nhwc_train", "formulas/rank5_ndhwc_eval",
                                  "formulas/rank2_channel_axis0_train"])
def test_channels_last_cases_pass(name):
    case = _case(name)
    results = TorchModuleAdapter().run(case, "cpu")
    assert results[0]["y"].shape == case.steps[0].x.shape
    assert judge(TorchModuleAdapter(), case, "cpu").status == "pass"


def test_affine_flag_covers_weight_and_bias_together():
    mixed = _case("formulas/scale_off_center_on_train")
    assert "Received: scale=False, center=True" in judge(TorchModuleAdapter(), mixed, "cpu").detail
    assert judge(TorchFunctionalAdapter(), mixed, "cpu").status == "pass"


def test_batch_stats_without_update_only_in_functional():
    case = _case("momentum/train_without_update_between")
    assert "Received: batch statistics without an update" in judge(TorchModuleAdapter(), case, "cpu").detail
    results = TorchFunctionalAdapter().run(case, "cpu")
    np.testing.assert_array_equal(results[1]["running_mean"], results[0]["running_mean"])
    assert judge(TorchFunctionalAdapter(), case, "cpu").status == "pass"


def test_cumulative_rule_needs_the_module():
    case = _case("momentum/cumulative_resume_from_3")
    assert "Received: cumulative" in judge(TorchFunctionalAdapter(), case, "cpu").detail
    assert judge(TorchModuleAdapter(), case, "cpu").status == "pass"


def test_bessel_running_variance_is_a_convention():
    """A biased case whose results depend on the kind is unsupported with the reason; relabelling
    its knob as Bessel (expected values still biased) makes torch run it and fail."""
    case = _case("momentum/decay_0.9_biased_3steps")
    verdict = judge(TorchModuleAdapter(), case, "cpu")
    assert verdict.status == "unsupported" and "always uses a Bessel-corrected running variance" in verdict.detail
    relabelled = replace(case, config=case.config.with_running(variance="bessel"))
    assert judge(TorchModuleAdapter(), relabelled, "cpu").status == "fail"


def test_adapter_modules_do_not_import_torch(fresh_imports):
    assert fresh_imports["torch adapters"]["frameworks"] == [], fresh_imports
