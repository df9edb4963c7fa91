"""The tf_keras export rows: tf_keras.auto+litert really converts the layer to a LiteRT flatbuffer and
runs it in the LiteRT interpreter (with the case's state frozen in, per state), tf_keras.auto+tf2onnx
really runs tf2onnx's ONNX graph in ONNX Runtime, and neither lets converter chatter reach fd 2."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from conftest import in_framework_process, requires

pytestmark = [requires("tensorflow", "tf_keras", "ai_edge_litert"), *in_framework_process("tensorflow")]

from bnconform.adapters.tensorflow.export_litert import TfKerasLiteRtAdapter  # noqa: E402
from bnconform.caseformat.validation import load_case  # noqa: E402
from bnconform.judging.judge import judge  # noqa: E402

CASES = Path(__file__).resolve().parent.parent / "cases"


def _case(name: str):
    return load_case(CASES / f"{name}.json")


@pytest.fixture(autouse=True)
def fresh_export_cache(tmp_path, monkeypatch):
    """Each test converts for itself (an empty export cache of its own)."""
    monkeypatch.setenv("BNCONFORM_EXPORT_CACHE", str(tmp_path / "exports"))


@pytest.fixture(scope="module")
def litert():
    return TfKerasLiteRtAdapter()


def test_litert_runs_a_converted_flatbuffer(litert, monkeypatch):
    """The interpreter is built from the converter's flatbuffer (file identifier TFL3), holds no
    FusedBatchNorm, and is invoked; the case passes."""
    import ai_edge_litert.interpreter as interpreter_module

    built = []

    class Recording(interpreter_module.Interpreter):
        def __init__(self, model_content=None, **kwargs):
            super().__init__(model_content=model_content, **kwargs)
            self.content, self.invoked = model_content, 0
            built.append(self)

        def invoke(self):
            self.invoked += 1
            return super().invoke()

    monkeypatch.setattr(interpreter_module, "Interpreter", Recording)
    verdict = judge(TfKerasLiteRtAdapter(), _case("formulas/rank4_nhwc_eval"), "cpu")
    assert verdict.status == "pass", verdict.detail
    assert len(built) == 1 and built[0].content[4:8] == b"TFL3" and built[0].invoked == 1
    ops = {op["op_name"] for op in built[0]._get_ops_details()}
    assert not any("BATCH_NORM" in op.upper() for op in ops), ops


def test_litert_freezes_each_state_and_a_wrong_state_fails(litert):
    """The same layer converted again for another state: the case's own state passes, the same
    case with a shifted running mean (expected values unchanged) fails."""
    case = _case("formulas/rank2_nc_eval")
    assert judge(litert, case, "cpu").status == "pass"
    state = case.initial_state
    wrong = replace(case, initial_state=replace(state, running_mean=state.running_mean + 1.0))
    verdict = judge(litert, wrong, "cpu")
    assert verdict.status == "fail" and "y" in verdict.detail, verdict.detail


def test_converter_refusal_is_the_declared_raises_and_stays_quiet(litert, capfd):
    """float64: the converter refuses (declared); its MLIR diagnostics never reach fd 1 or 2."""
    verdict = judge(litert, _case("formulas/float64_nc_eval"), "cpu")
    assert verdict.status == "deviation" and verdict.deviations == ["litert-float64-refused"], verdict.detail
    judge(litert, _case("formulas/rank3_nlc_eval"), "cpu")
    out, err = capfd.readouterr()
    assert "loc(" not in err and "XNNPACK" not in err + out and "TF Select" not in err, err[-2000:]


@pytest.mark.parametrize("row", ["litert", "tf2onnx"])
def test_a_kept_artifact_runs_as_the_conversion_did(row, monkeypatch):
    """A second adapter (a new layer, another generated name) finds the first one's artifact under
    the same key and never converts: the judged y is bit-identical; another state converts anew."""
    import numpy as np

    from bnconform.adapters import export_cache
    from bnconform.adapters.tensorflow.export_tf2onnx import TfKerasTf2OnnxAdapter

    cls = {"litert": TfKerasLiteRtAdapter, "tf2onnx": TfKerasTf2OnnxAdapter}[row]
    case = _case("formulas/rank4_nhwc_eval")
    first = cls().run(case, "cpu")
    import tensorflow as tf
    import tf2onnx

    def converted_again(*args, **kwargs):
        pytest.fail("converted although the artifact was kept")
    # the converters themselves (the adapter's own code is part of the key: patching it is a new key)
    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_keras_model", converted_again)
    monkeypatch.setattr(tf2onnx.convert, "from_keras", converted_again)
    reused = export_cache.COUNTS["reused"]
    again = cls().run(case, "cpu")
    assert export_cache.COUNTS["reused"] == reused + 1
    assert np.array_equal(first[0]["y"], again[0]["y"])
    state = case.initial_state
    moved = replace(case, initial_state=replace(state, running_mean=state.running_mean + 1.0))
    with pytest.raises(pytest.fail.Exception, match="converted although"):
        cls().run(moved, "cpu")


def test_only_inference_steps_are_expressible(litert):
    verdict = judge(litert, _case("momentum/decay_0.9_bessel_3steps"), "cpu")
    assert verdict.status == "pass", verdict.detail
    assert "step 0" in verdict.detail and "running_mean" in verdict.unobserved


@requires("tf2onnx", "onnxruntime")
def test_tf2onnx_writes_one_batch_normalization_node(monkeypatch):
    """The fused path becomes one ONNX BatchNormalization with the layer's float32 epsilon, run by ONNX Runtime."""
    import onnx
    import onnxruntime

    from bnconform.adapters.tensorflow.export_tf2onnx import TfKerasTf2OnnxAdapter

    sessions = []
    real = onnxruntime.InferenceSession
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda model, **kw: sessions.append(model) or real(model, **kw))
    case = _case("formulas/rank4_nchw_eval")
    verdict = judge(TfKerasTf2OnnxAdapter(), case, "cpu")
    assert verdict.status == "pass", verdict.detail
    (graph,) = [onnx.load_from_string(model).graph for model in sessions]
    nodes = [node for node in graph.node if node.op_type == "BatchNormalization"]
    assert len(nodes) == 1
    (epsilon,) = [onnx.helper.get_attribute_value(a) for a in nodes[0].attribute if a.name == "epsilon"]
    assert epsilon == pytest.approx(case.config.effective_epsilon, rel=1e-7)


def test_native_output_is_shown_when_asked_for(monkeypatch, capfd):
    """BNCONFORM_NATIVE_OUTPUT=1 turns the silencing off: what a converter writes to fd 2 shows."""
    import os

    from bnconform.adapters.quiet import silenced

    with silenced(("tensorflow",)):
        os.write(2, b"hidden line\n")
    monkeypatch.setenv("BNCONFORM_NATIVE_OUTPUT", "1")
    with silenced(("tensorflow",)):
        os.write(2, b"shown line\n")
    err = capfd.readouterr().err
    assert "shown line" in err and "hidden line" not in err
