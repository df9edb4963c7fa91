"""torch.nn.BatchNorm{1,2,3}d converted by OpenVINO and run by its CPU plugin: ``torch.nn+openvino``.

The module is the one ``torch.nn`` builds (:class:`~.nn.TorchModuleAdapter`), loaded with the
state the case expects before the step, converted by ``openvino.convert_model(module,
example_input=x, share_weights=False)`` (the PyTorch frontend: OpenVINO's documented path for a
torch module) and compiled by ``Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT":
"f32"})``; the compiled model replaces the module call (``_forward``).

What the path expresses, as measured (docs/modes.md, "torch.nn+openvino"):

* Inference only. The PyTorch frontend calls ``pt_module.eval()`` on every module it converts
  (``TorchScriptPythonDecoder._get_scripted_model``), so a module in train() converts to the
  inference computation (and is left in eval()): only inference steps are expressible
  (``("running", False)``); the graph keeps no state (``keeps_state = False``, judged step by step
  from the state each case expects); no gradients, no EMA knob (``decay_parameter = None``: the
  converted model has no momentum).
* The conversion folds the inference BN into ``x * scale + shift`` constants (MOC constant
  folding at conversion), so every state needs a conversion of its own: compiled models are cached
  per (graph key, state bytes); a case costs one conversion and one compilation per inference step
  (``speed_note``). The converted IR (``openvino.save_model``'s .xml and .bin) is also kept on disk
  between runs (bnconform.adapters.export_cache), so a warm run reads and compiles it.
* Precision is pinned to f32: the CPU plugin's default ``INFERENCE_PRECISION_HINT`` is bf16 on CPUs
  with bf16 support (Sapphire Rapids and later, this machine included), which may run a float32
  model in bfloat16; a conformance run must not depend on the CPU it runs on.

The non-channel axes are dynamic after conversion ([?,?,...]); the example input is the fixed one
of :func:`~.export_onnx.example_input`. Conversion and compilation run under
:func:`~.export_onnx.quiet_native` (OpenVINO's frontend logs and warnings go nowhere).
"""

from __future__ import annotations

import collections
import functools
import importlib.metadata
from pathlib import Path

import numpy as np

from ...caseformat import model
from ...judging.selectors import input_dtype_in
from ..base import Deviation, Mismatches
from ..export_cache import cached_artifact, pack, recipe, unpack
from .common import torch
from .export_common import example_input, exported_module, module_subject, placeholder_module, quiet_native
from .nn import TorchModuleAdapter

TS_DECODER = ("https://github.com/openvinotoolkit/openvino/blob/releases/2026/4/"
              "src/bindings/python/src/openvino/frontend/pytorch/ts_decoder.py")
PRECISION_DOCS = ("https://docs.openvino.ai/2026/openvino-workflow/running-inference/optimize-inference/"
                  "precision-control.html")
CPU_PRECISIONS = ("https://docs.openvino.ai/2024/openvino-workflow/running-inference/inference-devices-and-modes/"
                  "cpu-device.html")
CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1}
CACHE_SIZE = 64  # compiled models kept (one per state and graph key; a case needs one per inference step)


@functools.lru_cache(maxsize=None)
def openvino():
    """The ``openvino`` module and a ``Core``, imported on first use."""
    import openvino as ov

    return ov, ov.Core()


def convert(module, x):
    """``openvino.convert_model`` of the module (which it puts in eval()) and its CPU compilation."""
    ov, core = openvino()
    with quiet_native():
        converted = ov.convert_model(module, example_input=x, share_weights=False)
        return converted, core.compile_model(converted, "CPU", CONFIG)


def converted_ir(module, x) -> bytes:
    """``openvino.convert_model`` of the module as OpenVINO's IR: ``openvino.save_model`` (weights
    uncompressed) writes the .xml and .bin, returned as one artifact (export_cache.pack)."""
    import tempfile

    ov, _ = openvino()
    with quiet_native(), tempfile.TemporaryDirectory(prefix="bnconform-openvino-") as folder:
        ov.save_model(ov.convert_model(module, example_input=x, share_weights=False), f"{folder}/model.xml",
                      compress_to_fp16=False)
        return pack([Path(folder, "model.xml").read_bytes(), Path(folder, "model.bin").read_bytes()])


def compiled_ir(artifact: bytes):
    """The IR :func:`converted_ir` wrote, read back by ``Core.read_model`` and compiled for CPU."""
    ov, core = openvino()
    xml, weights = unpack(artifact)
    with quiet_native():
        return core.compile_model(core.read_model(xml.decode(), ov.Tensor(np.frombuffer(weights, np.uint8))), "CPU",
                                  CONFIG)


def to_openvino(x):
    """An ``ov.Tensor`` holding x; bfloat16 travels as its raw 16-bit patterns (NumPy has no bfloat16)."""
    ov, _ = openvino()
    if x.dtype == torch().bfloat16:
        return ov.Tensor(x.contiguous().view(torch().int16).numpy(), list(x.shape), ov.Type.bf16)
    return ov.Tensor(x.contiguous().numpy())


def from_openvino(tensor, dtype):
    """The output as a torch tensor of ``dtype`` (bfloat16 reinterpreted from its raw bits)."""
    data = np.array(tensor.data, copy=True)
    if dtype == torch().bfloat16:
        return torch().from_numpy(data.view(np.int16)).view(torch().bfloat16)
    return torch().from_numpy(data)


FLOAT64_AS_FLOAT32 = Deviation(
    name="openvino-cpu-float64-computed-in-float32",
    kind="dtype",
    applies=input_dtype_in("float64"),
    behaviour=Mismatches(("y",), "y carries float32 (not float64) precision"),
    explanation=("a float64 module converts to an f64 model, but the CPU plugin has no f64 primitives (its inference "
                 "precisions are f32, bf16 and f16) and runs it in f32: errors ~1e-7 relative in y, far above "
                 "float64 tolerances"),
    link=CPU_PRECISIONS,
)


class TorchOpenVinoAdapter(TorchModuleAdapter):
    """torch.nn's module converted by OpenVINO per (graph key, state), run by the CPU plugin in f32."""

    name = "torch.nn+openvino"
    execution_mode = "exported"
    eager_row = "torch.nn"
    keeps_state = False
    isolated = True  # OpenVINO's frontend and plugin stay out of torch.nn's process
    extra = "export"
    requires = ("torch", "openvino")
    device_kinds = ("cpu",)
    decay_parameter = None  # the converted model is inference only: no momentum survives the conversion
    capabilities = TorchModuleAdapter.capabilities.inference_only()
    deviations = (FLOAT64_AS_FLOAT32,)
    notes = ("openvino.convert_model(module) (PyTorch frontend; it calls module.eval(), so inference steps only), "
             "compiled for CPU with INFERENCE_PRECISION_HINT=f32 (default bf16 on this CPU)")
    speed_note = ("the conversion folds the state into constants, so each inference step costs one convert_model and "
                  "one compile_model (~0.3-1 s), cached per state; a warm run reads the kept IR and only compiles "
                  "(~0.05-0.1 s)")

    def __init__(self):
        super().__init__()
        self._compiled: collections.OrderedDict = collections.OrderedDict()

    def framework_version(self) -> str:
        return f"{super().framework_version()} (openvino {importlib.metadata.version('openvino')})"

    def framework_defaults(self) -> dict:
        return {}  # no EMA knob and no epsilon survive the conversion (folded into constants)

    @classmethod
    def exported_parameters(cls, config: model.Config) -> dict:
        """What the converted model holds for a module built from ``config`` (in train(), with
        distinct values so that nothing folds away): its operations (the BN folded into constants),
        the module's mode after conversion, and the precision the CPU plugin was given."""
        module = placeholder_module(exported_module(config)).train(True)
        converted, compiled = convert(module, example_input(4, 2, module.running_mean.dtype))
        ops = [op.get_type_name() for op in converted.get_ordered_ops()
               if op.get_type_name() not in ("Parameter", "Result", "Constant")]
        return {"converted model": {
            "converter": "openvino.convert_model", "module train() before, after": "train" if module.training else "eval",
            "operations": " ".join(ops), "momentum": None, "epsilon": "folded into constants",
            "inference precision": compiled.get_property("INFERENCE_PRECISION_HINT").to_string()}}

    def _model(self, module, x):
        """The compiled model for the module's key and state, converted once (LRU of CACHE_SIZE)."""
        example = example_input(x.dim(), module.num_features, x.dtype)
        key = module_subject(module, example)  # the graph key and the state's bytes
        if key in self._compiled:
            self._compiled.move_to_end(key)
        else:
            artifact = cached_artifact(self.name, ("torch", "openvino"), recipe(converted_ir, example_input), key,
                                       lambda: converted_ir(module, example))
            self._compiled[key] = compiled_ir(artifact)
            if len(self._compiled) > CACHE_SIZE:
                self._compiled.popitem(last=False)
        return self._compiled[key]

    def _forward(self, module, x):
        """y from OpenVINO's CPU plugin running the converted module."""
        compiled = self._model(module, x)
        request = compiled.create_infer_request()
        request.infer([to_openvino(x)])
        return from_openvino(request.get_output_tensor(0), x.dtype)


