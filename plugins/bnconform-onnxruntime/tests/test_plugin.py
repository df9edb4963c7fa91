"""Fast checks of the plug-in: registration through the entry point, and real verdicts.

Cases are generated in memory with bnconform's own spec builder (seeded inputs, oracle expected
values, the suite's tolerances), so these tests need no case files from the bnconform checkout.
"""

from __future__ import annotations

import importlib.metadata

import pytest

pytest.importorskip("onnxruntime")

from bnconform.adapters import registry  # noqa: E402
from bnconform.judging.judge import judge  # noqa: E402
from bnconform.caseformat.model import Config, RunningStats  # noqa: E402
from bnconform.specs import EVAL, TRAIN, Spec, build  # noqa: E402
from bnconform_onnxruntime.adapter import OnnxRuntimeAdapter  # noqa: E402


def _case(name, shape, channel_axis, steps, variance="biased", dtype="float32"):
    config = Config(channel_axis=channel_axis, running_stats=RunningStats(decay=0.9, variance=variance),
                    input_dtype=dtype, param_dtype=dtype)
    return build(Spec("plugin", name, "plug-in test case", config, [shape], steps))


def test_entry_point_resolves_to_the_adapter_class():
    found = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=registry.ENTRY_POINT_GROUP)}
    assert found.get("onnxruntime") == "bnconform_onnxruntime.adapter:OnnxRuntimeAdapter"
    assert "onnxruntime" not in registry.BUILTIN  # registered by the plug-in only
    assert registry.resolve("onnxruntime") is OnnxRuntimeAdapter


def test_eval_case_passes():
    case = _case("nchw_eval", (3, 4, 2, 2), 1, (EVAL,))
    verdict = judge(OnnxRuntimeAdapter(), case, "cpu")
    assert verdict.status == "pass", verdict.detail
    assert verdict.compared == ["y", "running_mean", "running_var"]


def test_channels_last_training_updates_pass():
    case = _case("nhwc_train", (2, 3, 2, 4), 3, (TRAIN, TRAIN, EVAL))
    verdict = judge(OnnxRuntimeAdapter(), case, "cpu")
    assert verdict.status == "pass", verdict.detail


def test_a_bessel_case_that_depends_on_the_kind_is_unsupported_by_the_biased_convention():
    case = _case("bessel_train", (4, 3), 1, (TRAIN, TRAIN), variance="bessel")
    verdict = judge(OnnxRuntimeAdapter(), case, "cpu")
    assert verdict.status == "unsupported", verdict.detail
    assert "biased running variance" in verdict.detail and "Bessel" in verdict.detail


def test_a_bessel_case_whose_results_do_not_depend_on_the_kind_runs_and_passes():
    case = _case("bessel_eval", (4, 3), 1, (EVAL,), variance="bessel")  # no update: the kind never matters
    verdict = judge(OnnxRuntimeAdapter(), case, "cpu")
    assert verdict.status == "pass", verdict.detail


def test_float64_case_is_the_declared_float32_attribute_deviation():
    case = _case("float64_train", (6, 3), 1, (TRAIN, TRAIN, EVAL), dtype="float64")
    verdict = judge(OnnxRuntimeAdapter(), case, "cpu")
    assert (verdict.status, verdict.deviations, verdict.kinds) == \
        ("deviation", ["onnx-float32-epsilon-momentum"], ["dtype"]), verdict.detail


def test_empty_batch_update_is_the_declared_defect_deviation():
    case = build(Spec("plugin", "empty", "plug-in test case", Config(channel_axis=1, running_stats=RunningStats(
        variance="biased")), [(0, 3), (4, 3)], (TRAIN, EVAL)))
    verdict = judge(OnnxRuntimeAdapter(), case, "cpu")
    assert (verdict.status, verdict.deviations, verdict.kinds) == \
        ("deviation", ["onnx-empty-batch-nan-running-stats"], ["defect"]), verdict.detail


def test_defaults_are_read_from_the_onnx_operator_schema():
    # The BatchNormalization-15 spec documents momentum 0.9 and epsilon 1e-5 (float32 attributes).
    assert OnnxRuntimeAdapter().framework_defaults() == {"decay_parameter": 0.9, "epsilon": 1e-5}
    assert OnnxRuntimeAdapter.decay_parameter == ("momentum", "old")


def test_sessions_are_cached_per_mode_and_knobs():
    adapter, case = OnnxRuntimeAdapter(), _case("cache", (4, 3), 1, (TRAIN, EVAL, TRAIN))
    adapter.run(case, "cpu")
    adapter.run(case, "cpu")
    assert len(adapter._sessions) == 2  # one training-mode and one inference-mode session
