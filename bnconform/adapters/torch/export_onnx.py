"""torch.nn.BatchNorm{1,2,3}d exported to ONNX by torch.onnx.export and run by ONNX Runtime (CPU).

``torch.nn+onnx``: ``torch.onnx.export(module, (x,), dynamo=False)`` (the TorchScript-based
exporter); ``torch.nn+onnx.dynamo``: ``torch.onnx.export(module, (x,), dynamo=True)`` (the
torch.export-based exporter, onnxscript's torchlib). The module is the one ``torch.nn`` builds
(:class:`~.nn.TorchModuleAdapter`: class by rank, eps, momentum = 1 - decay, affine, dtype), loaded
with the case's gamma, beta and running statistics, put in ``train()`` or ``eval()`` as the step
says; the export replaces the module call (``_forward``), and ONNX Runtime's CPU provider runs the
exported file.

What the path expresses, as measured (docs/modes.md, "torch.nn+onnx"):

* The exported graph keeps no state. An eval export writes ``BatchNormalization(training_mode=0)``
  with the running statistics as initializers. A training export (module.train(),
  ``training=TrainingMode.TRAINING``) writes ``training_mode=1`` with momentum in ONNX's convention
  (``momentum_f=1 - momentum``: 0.9 for torch's 0.1), but the node's running-mean / running-var
  outputs are not graph outputs (symbolic_opset14.batch_norm returns only Y), so no update is
  observable: a training step runs as a batch-statistics step without an update (``("batch",
  False)``), judged from the state the case expects (``keeps_state = False``).
* The dynamo exporter writes the same node, but onnxscript's torchlib forces ``training = False``
  for batch norm: a module in train() exports as an inference node (declared, ``defect``).
* No gradients (an ONNX inference graph has no autodiff); the channel axis is moved to 1 by the
  eager row's movedim (outside the graph).

Caching: a graph is exported once per (module class, C, input dtype, param dtype, affine, eps,
momentum, train/eval), from a module holding distinct placeholder values (the exporters
deduplicate equal initializers: ones / zeros would merge weight with running_var) and a fixed
example input whose non-channel axes are dynamic (a graph exported once runs every batch size, as
deployed). Per case the module's state is written into the graph's initializers -- the bytes the
exporter writes for a module holding that state (tests/test_export_torch.py checks this against a
fresh export) -- and a session is created (~1-5 ms). An exporter's refusal is cached and re-raised
for every case of its key, so it is that cell's error or declared Raises. Exported graphs are also
kept on disk between runs (bnconform.adapters.export_cache: keyed by the placeholder module's
:func:`~.export_common.module_subject`, the exporters' versions and the export functions' source).

Exporter warnings (DeprecationWarning of the TorchScript exporter, "training mode" UserWarning)
and ONNX Runtime's C++ log lines are silenced inside the adapter (:func:`quiet_native`).
"""

from __future__ import annotations

import functools
import importlib.metadata
from dataclasses import replace
from typing import Callable

import numpy as np

from ...caseformat import model
from ...judging.compare import compare_case
from ...judging.selectors import (Selector, affine_partly_off, changes_results, epsilon_zero, input_dtype_in,
                                  training_step)
from ...reference import oracle
from ..base import Deviation, MatchesVariant, Raises
from ..export_cache import cached_artifact, recipe
from ..findings import float32_variance_overflow
from .common import PR_POSITIVE_EPS, torch
from .export_common import (PARAMETERS, example_input, exported_module, graph_key, module_subject, placeholder_module,
                            quiet_native, raw_bytes, shortest)
from .nn import TorchModuleAdapter

TORCHLIB_CORE = ("https://github.com/microsoft/onnxscript/blob/v0.7.2/"
                 "onnxscript/function_libs/torch_lib/ops/core.py")
ORT_BATCH_NORM = ("https://github.com/microsoft/onnxruntime/blob/0606f7d6a37fb8dfc2cde779e3cf4dd02fe457ea/"
                  "onnxruntime/core/providers/cpu/nn/batch_norm.h")
EXPORT_DISTRIBUTIONS = ("torch", "onnx", "onnxscript")  # what writes the ONNX file (export_cache key)
ONNX_TYPES = {"float16": "FLOAT16", "bfloat16": "BFLOAT16", "float32": "FLOAT", "float64": "DOUBLE"}


@functools.lru_cache(maxsize=None)
def onnx_modules():
    """(onnx, onnxruntime), imported on first use; ONNX Runtime's default logger at ERROR."""
    import onnx
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    return onnx, onnxruntime


def export_torchscript(module, x) -> bytes:
    """``torch.onnx.export(dynamo=False)`` of ``module`` in its own train/eval mode, with every
    non-channel axis dynamic; the serialized ModelProto."""
    import io

    t = torch()
    mode = t.onnx.TrainingMode.TRAINING if module.training else t.onnx.TrainingMode.EVAL
    axes = {axis: f"d{axis}" for axis in range(x.dim()) if axis != 1}
    buffer = io.BytesIO()
    t.onnx.export(module, (x,), buffer, dynamo=False, training=mode, input_names=["x"], output_names=["y"],
                  dynamic_axes={"x": axes, "y": axes})
    return buffer.getvalue()


def export_dynamo(module, x) -> bytes:
    """``torch.onnx.export(dynamo=True)`` of ``module`` as it is (train or eval), with every
    non-channel axis dynamic; the serialized ModelProto."""
    t = torch()
    shapes = ({axis: t.export.Dim.DYNAMIC for axis in range(x.dim()) if axis != 1},)
    program = t.onnx.export(module, (x,), dynamo=True, dynamic_shapes=shapes, input_names=["x"],
                            output_names=["y"], verbose=False)
    return program.model_proto.SerializeToString()


# --- Reading and filling the exported graph -----------------------------------------------------------

def batch_norm_node(proto):
    """The graph's single BatchNormalization node (anything else is not the graph this row judges)."""
    nodes = [n for n in proto.graph.node if n.op_type == "BatchNormalization"]
    if len(nodes) != 1:
        raise RuntimeError(f"Expected: one BatchNormalization node in the exported graph. Received: "
                           f"{[n.op_type for n in proto.graph.node]}")
    return nodes[0]


def written_parameters(data: bytes) -> dict:
    """The BatchNormalization node's attributes as the file stores them (momentum, epsilon,
    training_mode: absent = the spec's default 0), the default-domain opset and the node's graph
    outputs that reach the graph's outputs."""
    onnx, _ = onnx_modules()
    proto = onnx.load_from_string(data)
    node = batch_norm_node(proto)
    found = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    graph_outputs = {o.name for o in proto.graph.output}
    return {"op": "BatchNormalization", "opset": next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
            "momentum": found.get("momentum"), "epsilon": found.get("epsilon"),
            "training_mode": int(found.get("training_mode", 0)),
            "running statistics outputs": sum(1 for name in node.output[1:] if name in graph_outputs)}


def with_state(data: bytes, module) -> bytes:
    """The exported graph with the module's current weight, bias and running statistics written
    into the initializers feeding BatchNormalization inputs 1..4 (raw little-endian bytes, the
    exporter's own layout); exporter-made constants (the ones / zeros of affine=False) stay."""
    onnx, _ = onnx_modules()
    proto = onnx.load_from_string(data)
    initializers = {init.name: init for init in proto.graph.initializer}
    for name, value in zip(PARAMETERS, batch_norm_node(proto).input[1:5]):
        tensor = getattr(module, name)
        if tensor is None:
            continue
        if value not in initializers:
            raise RuntimeError(f"Expected: module {name} as an initializer of the exported graph. Received: {value!r}")
        _fill(initializers[value], tensor)
    return proto.SerializeToString()


def _fill(initializer, tensor) -> None:
    """Replace an initializer's values by the tensor's, keeping its name, element type and shape."""
    onnx, _ = onnx_modules()
    wanted = getattr(onnx.TensorProto, ONNX_TYPES[str(tensor.dtype).removeprefix("torch.")])
    if initializer.data_type != wanted or list(initializer.dims) != list(tensor.shape):
        raise RuntimeError(f"Expected: initializer {initializer.name} of type {wanted}, shape {list(tensor.shape)}. "
                           f"Received: type {initializer.data_type}, shape {list(initializer.dims)}")
    name, data_type, dims = initializer.name, initializer.data_type, list(initializer.dims)
    initializer.Clear()
    initializer.name, initializer.data_type = name, data_type
    initializer.dims.extend(dims)
    initializer.raw_data = raw_bytes(tensor)


def session(data: bytes):
    """An ONNX Runtime CPU session for the serialized model, logging at ERROR, one thread."""
    _, ort = onnx_modules()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


# --- What the exported path does differently (measured; docs/modes.md) ------------------------------

def float32_epsilon_variant(case: model.Case) -> model.Case:
    """The case with epsilon and its floor rounded to float32, as an ONNX FLOAT attribute stores them."""
    config = case.config
    return model.variant(case, epsilon=float(np.float32(config.epsilon)),
                         epsilon_floor=float(np.float32(config.epsilon_floor)))


def inference_variant(case: model.Case) -> model.Case:
    """The case with every step normalized with the running statistics (an inference node)."""
    return replace(case, steps=[replace(step, normalize_with="running") for step in case.steps])


def _same_case(case: model.Case) -> model.Case:
    return case


def rounding_shows(node: Callable[[model.Case], model.Case] = _same_case, what: str = "y") -> Selector:
    """float64 cases where the float32-rounded epsilon moves the oracle's results for the node the
    graph runs (``node(case)``: the case itself, or its inference twin) beyond the case's tolerances."""
    def shows(case: model.Case, device: str) -> bool:
        if case.config.input_dtype != "float64":
            return False
        runs = node(case)
        try:
            exact, rounded = oracle.run_case(runs), oracle.run_case(float32_epsilon_variant(runs))
        except (ValueError, ZeroDivisionError, FloatingPointError):
            return False  # the oracle cannot run it: nothing to observe
        return bool(compare_case(runs, rounded, exact)[0])
    return Selector(f"float64, where the float32-rounded epsilon changes {what}", shows)


def float32_epsilon(row: str, node: Callable[[model.Case], model.Case] = _same_case, what: str = "y") -> Deviation:
    """float64 graphs normalize with the float32-rounded epsilon attribute."""
    return Deviation(
        name="onnx-float32-epsilon",
        kind="dtype",
        applies=rounding_shows(node, what),
        behaviour=MatchesVariant("y matches the oracle with epsilon rounded to float32", float32_epsilon_variant),
        explanation=(f"{row}: BatchNormalization's epsilon is a FLOAT attribute (32-bit in AttributeProto) whatever "
                     "the tensor type, so a float64 graph adds float32(eps) (1e-5 -> 9.99999975e-06): ~1e-8 relative "
                     "in y where the variance is near eps, far above float64 tolerances"),
        link="https://github.com/onnx/onnx/issues/3261",
    )


def eps_zero_rejected_at_export(row: str, exception: str = "ValueError") -> Deviation:
    """Exporting a module in train() with eps = 0 traces F.batch_norm, which refuses it (the dynamo
    exporter wraps the ValueError in a TorchExportError whose summary quotes it)."""
    return Deviation(
        name="eps-zero-rejected-in-training",
        kind="edge",
        applies=epsilon_zero & training_step(),
        behaviour=Raises(exception, "eps must be positive during training"),
        explanation=(f"{row}: exporting a module in train() runs its forward, and since torch 2.10 F.batch_norm "
                     "raises for eps <= 0 in training, so no training graph with eps = 0 can be exported (eval "
                     "exports accept it)"),
        link=PR_POSITIVE_EPS,
        versions=">=2.10",
    )


TORCHLIB_TRAINING_FORCED_OFF = Deviation(
    name="dynamo-export-training-batch-norm-as-inference",
    kind="defect",
    applies=training_step() & changes_results(inference_variant, "the running statistics change y"),
    behaviour=MatchesVariant("y is normalized with the running statistics, not the batch's", inference_variant),
    explanation=("a module in train() (the documented way to export training behaviour since training= was "
                 "deprecated) exports as BatchNormalization without training_mode: onnxscript's torchlib sets "
                 "'training = False' in aten_native_batch_norm and aten__native_batch_norm_legit_functional ('a "
                 "temporary fix' for BatchNormalization forced into training mode, issue 1338), so the graph "
                 "normalizes a training batch with the running statistics, silently"),
    link=TORCHLIB_CORE,
)


TORCHLIB_FLOAT32_AFFINE_CONSTANTS = Deviation(
    name="dynamo-float32-ones-for-float64-affine-off",
    kind="dtype",
    applies=input_dtype_in("float64") & affine_partly_off & training_step(),
    behaviour=Raises("NotImplemented", "Could not find an implementation for BatchNormalization"),
    explanation=("a float64 module with affine=False in train() exports scale and B as float32 ones / zeros "
                 "(torchlib's aten__native_batch_norm_legit_functional builds them with op.Constant(value_floats) "
                 "and no CastLike, unlike aten_native_batch_norm), a (double, float) BatchNormalization that the "
                 "spec allows but ONNX Runtime's CPU provider has no kernel for: the session cannot be created"),
    link=TORCHLIB_CORE,
)

ORT_FLOAT32_OVERFLOW = float32_variance_overflow(
    "onnxruntime-float32-variance-overflow",
    "ONNX Runtime's CPU BatchNorm<float> sums the squared deviations (squaredNorm) in float, so for |x| ~ 1e37 the "
    "batch variance is inf and y = x * 0 + (B - mean * 0) collapses to B, where the exact variance is ~1e74",
    ORT_BATCH_NORM, effect="y collapses to beta")

ORT_NO_BFLOAT16 = Deviation(
    name="onnxruntime-no-bfloat16-batchnorm-cpu",
    kind="dtype",
    applies=input_dtype_in("bfloat16"),
    behaviour=Raises("NotImplemented", "Could not find an implementation for BatchNormalization"),
    explanation=("the exporters write a bfloat16 BatchNormalization (the spec allows tensor(bfloat16)), but ONNX "
                 "Runtime's CPU provider registers no BatchNormalization kernel for it, so the session cannot be "
                 "created"),
    link=ORT_BATCH_NORM,
)


# --- The rows ---------------------------------------------------------------------------------------

class TorchOnnxAdapter(TorchModuleAdapter):
    """torch.nn's module exported by ``exporter`` (once per graph key), its state written into the
    graph per case, run by ONNX Runtime's CPU provider in place of the module call."""

    name = "torch.nn+onnx"
    execution_mode = "exported"
    eager_row = "torch.nn"
    keeps_state = False
    isolated = True  # the exporters' machinery (TorchScript tracing, torch.export) stays out of torch.nn's process
    extra = "export"
    requires = ("torch", "onnx", "onnxruntime")
    device_kinds = ("cpu",)
    decay_parameter = ("momentum", "old")  # the graph's attribute: ONNX weighs the old statistic (1 - torch's)
    exporter_call = "torch.onnx.export(dynamo=False)"
    # The training node's running-variance output is ONNX's biased ReduceVar (ORT: saved_var / N): never
    # observed here (not a graph output), but what a user reading that output would port to.
    capabilities = replace(TorchModuleAdapter.capabilities, step_kinds=frozenset({("batch", False), ("running", False)}),
                           gradients=frozenset(), running_variance=frozenset({"biased"}))
    notes = ("torch.onnx.export(dynamo=False) of nn.BatchNorm1d/2d/3d (train(): training_mode=1; eval(): 0), "
             "dynamic non-channel axes, run by onnxruntime CPU; the node's running-statistics outputs are not "
             "graph outputs, so a training step is judged without its update")
    deviations = (eps_zero_rejected_at_export("torch.nn+onnx"), float32_epsilon("torch.nn+onnx"),
                  ORT_FLOAT32_OVERFLOW, ORT_NO_BFLOAT16)
    speed_note = ("one export per graph key (~30-60 ms), then per case the state written into the initializers and "
                  "an ONNX Runtime session (~1-5 ms)")

    def __init__(self):
        super().__init__()
        self._graphs: dict = {}  # graph_key -> serialized ModelProto, or the exporter's exception

    def framework_version(self) -> str:
        versions = [f"{d} {importlib.metadata.version(d)}" for d in self.requires if d != "torch"]
        return f"{super().framework_version()} ({', '.join(versions)})"

    @staticmethod
    def export(module, x) -> bytes:
        return export_torchscript(module, x)

    def framework_defaults(self) -> dict:
        """momentum and epsilon as the exporter writes them for a default nn.BatchNorm2d."""
        written = self.exported_parameters(model.Config(channel_axis=1, epsilon=torch().nn.BatchNorm2d(1).eps))
        return {"decay_parameter": written["eval export"]["momentum"], "epsilon": written["eval export"]["epsilon"]}

    @classmethod
    def exported_parameters(cls, config: model.Config) -> dict:
        """The BatchNormalization attributes this row's exporter writes for a module built from
        ``config`` (momentum and epsilon as the float32 attributes read back, shortest decimal), in
        an eval and a training export: what porting through the export changes."""
        found = {}
        for label, training in (("eval export", False), ("training export", True)):
            module = exported_module(config).train(training)
            with quiet_native():
                written = written_parameters(cls.export(module, example_input(4, 2, module.running_mean.dtype)))
            stored = ", ".join(f"{key} {np.float32(written[key]):.9g}" for key in ("momentum", "epsilon")
                               if written[key] is not None)
            for key in ("momentum", "epsilon"):
                written[key] = None if written[key] is None else shortest(written[key])
            found[label] = {"exporter": cls.exporter_call, **written, "stored as float32": stored}
        return found

    def _graph(self, module, x) -> bytes:
        """The exported graph for the module's key, exported once from a placeholder twin."""
        key = graph_key(module, x)
        if key not in self._graphs:
            twin = placeholder_module(module).train(module.training)
            example = example_input(x.dim(), module.num_features, x.dtype)
            how = recipe(type(self).export, export_torchscript, export_dynamo, placeholder_module, example_input)
            try:
                with quiet_native():
                    self._graphs[key] = cached_artifact(self.name, EXPORT_DISTRIBUTIONS, how, module_subject(twin, example),
                                                        lambda: self.export(twin, example))
            except Exception as exc:  # an exporter's refusal is every such case's outcome
                self._graphs[key] = exc
        if isinstance(self._graphs[key], Exception):
            raise self._graphs[key].with_traceback(None)  # the same refusal, its traceback not regrown
        return self._graphs[key]

    def _forward(self, module, x):
        """y from ONNX Runtime running the exported graph with the module's state written in."""
        data = with_state(self._graph(module, x), module)
        with quiet_native():
            runner = session(data)
        (y,) = runner.run(None, {"x": x.contiguous().numpy()})
        return torch().from_numpy(np.ascontiguousarray(y))


class TorchOnnxDynamoAdapter(TorchOnnxAdapter):
    """The same with the torch.export-based exporter (``dynamo=True``, onnxscript's torchlib)."""

    name = "torch.nn+onnx.dynamo"
    requires = ("torch", "onnx", "onnxruntime", "onnxscript")
    exporter_call = "torch.onnx.export(dynamo=True)"
    # An inference node only (no running-statistics update at all): the eager row's conventions stand.
    capabilities = replace(TorchOnnxAdapter.capabilities, running_variance=TorchModuleAdapter.capabilities.running_variance)
    notes = ("torch.onnx.export(dynamo=True) of nn.BatchNorm1d/2d/3d, dynamic non-channel axes, run by onnxruntime "
             "CPU; torchlib exports batch norm as an inference node even from train()")
    speed_note = ("one torch.export + torchlib export per graph key (~0.6-2 s; none once kept from an earlier run), then per case the state written "
                  "into the initializers and an ONNX Runtime session (~1-5 ms)")

    # No float32 variance overflow: the graph never computes a batch variance (an inference node).
    deviations = (eps_zero_rejected_at_export("torch.nn+onnx.dynamo", "TorchExportError"), TORCHLIB_TRAINING_FORCED_OFF,
                  TORCHLIB_FLOAT32_AFFINE_CONSTANTS, float32_epsilon("torch.nn+onnx.dynamo", inference_variant,
                                                                   "y of the inference node the graph runs"),
                  ORT_NO_BFLOAT16)

    @staticmethod
    def export(module, x) -> bytes:
        return export_dynamo(module, x)
