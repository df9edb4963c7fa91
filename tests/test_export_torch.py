"""The torch export rows: torch.nn+onnx runs a graph torch.onnx.export really wrote (per case, with the
case's state written where a fresh export would put it), its momentum is ONNX's (a wrong
translation fails a training case), torch.nn+onnx.dynamo's training export is an inference node,
torch.nn+openvino converts the module (to eval()), and ``bnconform port`` names momentum and the
parameters written into the exported graph."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import in_framework_process, requires

pytestmark = [requires("torch", "onnx", "onnxruntime"), *in_framework_process("torch")]

import onnx  # noqa: E402
import torch  # noqa: E402

from bnconform.adapters.torch.export_common import (example_input, exported_module, placeholder_module,  # noqa: E402
                                                    quiet_native)
from bnconform.adapters.torch.export_onnx import (TorchOnnxAdapter, TorchOnnxDynamoAdapter, batch_norm_node,  # noqa: E402
                                                  session, with_state, written_parameters)
from bnconform.caseformat.model import Config, RunningStats  # noqa: E402
from bnconform.caseformat.validation import load_case  # noqa: E402
from bnconform.judging.judge import judge  # noqa: E402

CASES = Path(__file__).resolve().parent.parent / "cases"
CONFIG = Config(channel_axis=1, epsilon=1e-5, running_stats=RunningStats(decay=0.9))  # torch momentum 0.1


@pytest.fixture(autouse=True)
def fresh_export_cache(tmp_path, monkeypatch):
    """Each test exports for itself (an empty export cache of its own)."""
    monkeypatch.setenv("BNCONFORM_EXPORT_CACHE", str(tmp_path / "exports"))


def _case(name: str):
    return load_case(CASES / f"{name}.json")


def _export(training: bool, module=None) -> bytes:
    module = (module or placeholder_module(exported_module(CONFIG))).train(training)
    with quiet_native():
        return TorchOnnxAdapter.export(module, example_input(4, 2, torch.float32))


def test_the_graph_is_torch_onnx_exports_with_onnx_momentum():
    """producer pytorch <version>, one BatchNormalization: momentum 0.9 for torch's 0.1 (ONNX weighs
    the old statistic), training_mode 1 for a train() module, whose running outputs the exporter
    leaves out of the graph outputs."""
    proto = onnx.load_from_string(_export(True))
    assert (proto.producer_name, proto.producer_version) == ("pytorch", torch.__version__.split("+")[0])
    node = batch_norm_node(proto)
    written = written_parameters(proto.SerializeToString())
    assert written["momentum"] == pytest.approx(0.9, abs=1e-7) and written["training_mode"] == 1
    assert written["epsilon"] == pytest.approx(1e-5, rel=1e-7)
    assert len(node.output) == 3 and written["running statistics outputs"] == 0
    assert written_parameters(_export(False))["training_mode"] == 0


def test_state_written_per_case_equals_a_fresh_export():
    """with_state puts the module's values where the exporter puts them for a module holding them."""
    module = exported_module(CONFIG).eval()
    with torch.no_grad():
        for tensor in (module.weight, module.bias, module.running_mean, module.running_var):
            tensor.copy_(torch.rand(2) + 0.5)
    fresh, filled = onnx.load_from_string(_export(False, module)), onnx.load_from_string(with_state(_export(False), module))
    assert [n.SerializeToString() for n in fresh.graph.node] == [n.SerializeToString() for n in filled.graph.node]
    arrays = {i.name: onnx.numpy_helper.to_array(i) for i in filled.graph.initializer}
    for init in fresh.graph.initializer:
        np.testing.assert_array_equal(arrays[init.name], onnx.numpy_helper.to_array(init))


class ExposedStatistics(TorchOnnxAdapter):
    """Test only: the torch.nn+onnx training graph with its BatchNormalization's running-statistics
    outputs made graph outputs and carried to the next step (what training through the exported
    graph needs), optionally with the momentum attribute a wrong translation would write."""

    name = "test.torch.nn+onnx.exposed"
    keeps_state = True
    capabilities = replace(TorchOnnxAdapter.capabilities, step_kinds=frozenset({("batch", True), ("running", False)}))
    deviations = ()
    written_momentum = None  # None: the exporter's own attribute

    def run(self, case, device):
        return [{k: v for k, v in step.items() if k != "num_updates"} for step in super().run(case, device)]

    def _forward(self, module, x):
        proto = onnx.load_from_string(with_state(self._graph(module, x), module))
        node = batch_norm_node(proto)
        if module.training:
            proto.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                                      for name in node.output[1:3])
            for attribute in node.attribute:
                if attribute.name == "momentum" and self.written_momentum is not None:
                    attribute.f = self.written_momentum
        outputs = session(proto.SerializeToString()).run(None, {"x": x.contiguous().numpy()})
        if module.training:
            module.running_mean.copy_(torch.from_numpy(outputs[1]))
            module.running_var.copy_(torch.from_numpy(outputs[2]))
        return torch.from_numpy(outputs[0])


def test_a_wrong_momentum_translation_fails_a_training_case():
    """Three updates then an inference step (biased twin: ONNX's running variance is biased): the
    exported graph's own momentum reproduces the case; torch's momentum written unflipped (0.1, the
    porting trap) makes the running statistics, and the inference y after them, fail."""
    case = _case("momentum/decay_0.9_biased_3steps")
    verdict = judge(ExposedStatistics(), case, "cpu")
    assert verdict.status == "pass", verdict.detail
    assert "running_mean" in verdict.compared
    wrong = ExposedStatistics()
    wrong.written_momentum = 0.1
    verdict = judge(wrong, case, "cpu")
    assert verdict.status == "fail" and "running_mean" in verdict.detail, verdict.detail


@pytest.mark.parametrize("name", ["momentum/decay_0.9_bessel_3steps", "formulas/rank4_nchw_train"])
def test_the_row_passes_training_and_inference_steps(name):
    verdict = judge(TorchOnnxAdapter(), _case(name), "cpu")
    assert verdict.status == "pass", verdict.detail
    assert "running_mean" in verdict.unobserved


@requires("onnxscript")
def test_dynamo_exports_a_train_module_as_an_inference_node():
    """torchlib forces training = False: no training_mode attribute, y from the running statistics
    (declared: the training step is a deviation whose variant normalizes with them)."""
    module = placeholder_module(exported_module(CONFIG)).train(True)
    with quiet_native():
        written = written_parameters(TorchOnnxDynamoAdapter.export(module, example_input(4, 2, torch.float32)))
    assert written["training_mode"] == 0 and written["momentum"] == pytest.approx(0.9, abs=1e-7)
    verdict = judge(TorchOnnxDynamoAdapter(), _case("formulas/rank4_nchw_train"), "cpu")
    assert verdict.status == "deviation" and verdict.deviations == ["dynamo-export-training-batch-norm-as-inference"]


@requires("openvino")
def test_openvino_converts_the_module_into_eval_and_passes_inference():
    from bnconform.adapters.torch.export_openvino import TorchOpenVinoAdapter, convert

    module = exported_module(CONFIG).train(True)
    converted, compiled = convert(module, example_input(4, 2, torch.float32))
    assert not module.training  # the PyTorch frontend called module.eval()
    assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) in ("<Type: 'float32'>", "f32")
    verdict = judge(TorchOpenVinoAdapter(), _case("formulas/rank4_nchw_eval"), "cpu")
    assert verdict.status == "pass", verdict.detail


@pytest.mark.parametrize("row", ["torch.nn+onnx", "torch.nn+onnx.dynamo", "torch.nn+openvino"])
def test_a_kept_artifact_runs_as_the_export_did(row, monkeypatch):
    """A second adapter finds the first one's exported file under the same key and never exports:
    the judged y is bit-identical; a graph of another key (eps) exports anew."""
    from bnconform.adapters import export_cache
    from bnconform.adapters.torch import export_openvino
    from bnconform.execution.adapter_classes import adapter_class

    pytest.importorskip({"torch.nn+onnx": "onnx", "torch.nn+onnx.dynamo": "onnxscript", "torch.nn+openvino": "openvino"}[row])
    cls, case = adapter_class(row), _case("formulas/rank4_nchw_eval")
    first = cls().run(case, "cpu")

    def exported_again(*args, **kwargs):
        raise AssertionError("exported although the artifact was kept")
    # the exporters themselves (the adapter's own code is part of the key: patching it is a new key)
    monkeypatch.setattr(torch.onnx, "export", exported_again)
    if row == "torch.nn+openvino":
        monkeypatch.setattr(export_openvino.openvino()[0], "convert_model", exported_again)
    reused = export_cache.COUNTS["reused"]
    again = cls().run(case, "cpu")
    assert export_cache.COUNTS["reused"] == reused + 1
    assert np.array_equal(first[0]["y"], again[0]["y"])
    other = replace(case, config=replace(case.config, epsilon=case.config.epsilon * 2))
    with pytest.raises(AssertionError, match="exported although"):
        cls().run(other, "cpu")


def test_port_names_momentum_and_the_written_parameters(tmp_path, capsys):
    """bnconform port torch.nn torch.nn+onnx exits 0, translates momentum (1 - torch's) and lists the
    BatchNormalization attributes as written, with the convention the written momentum follows."""
    import json

    from bnconform.interfaces.cli import main
    from bnconform.interfaces.port import run_document

    cases = [_case(name) for name in ("momentum/decay_0.9_bessel_3steps", "formulas/float64_nc_eval")]
    document = run_document(["torch.nn", "torch.nn+onnx"], CASES, cases, ["cpu"])
    path = tmp_path / "results.json"
    path.write_text(json.dumps(document))
    assert main(["port", "torch.nn", "torch.nn+onnx", "--results", str(path)]) == 0
    out = capsys.readouterr().out
    assert "momentum: torch.nn+onnx momentum = 1 - torch.nn momentum" in out
    assert "torch.nn momentum=0.1 (weight on the new batch) -> torch.nn+onnx momentum=0.9" in out
    training = next(line for line in out.splitlines() if "torch.nn+onnx training export:" in line)
    assert "momentum=0.9" in training and "training_mode=1" in training and "epsilon 9.99999975e-06" in training
    assert "is the weight on the old statistic, as torch.nn+onnx's decay_parameter declares" in training
    assert "onnx-float32-epsilon" in out  # the measured difference the float32 attribute makes
