"""ONNX ``BatchNormalization`` (opset 15) run by ONNX Runtime, as a third-party bnconform adapter.

Each case becomes a one-node ONNX model built in memory with ``onnx.helper`` and run by an
``onnxruntime.InferenceSession``. ONNX BatchNormalization is stateless: the running statistics
are inputs (input_mean, input_var) and, in training mode, outputs (running_mean, running_var),
so the adapter carries them from one step's outputs to the next step's inputs.

Translation (canonical knob -> ONNX):

    channel_axis            -> ONNX fixes the channel at axis 1; any other axis is moved there
                               with np.transpose before the run and moved back after (the
                               framework still sees and computes everything)
    decay (weight on old)   -> momentum attribute (spec: running = input * momentum + current * (1 - momentum))
    epsilon, epsilon_floor  -> epsilon attribute = max(epsilon, epsilon_floor) (added inside the sqrt)
    scale=False/center=False-> scale input = ones / B input = zeros (ONNX has no switch; this is
                               what exporters emit for an affine-free BN)
    input/param dtype       -> X type / scale, B, mean, var types (opset 15 allows them to differ)
    gamma, beta, running_*  -> scale, B, input_mean, input_var inputs
    normalize_with=batch    -> training_mode=1; running_mean/var outputs become the next state
                               when update_running_stats, and are left unused when not
    normalize_with=running  -> training_mode=0 (output Y only)

Outputs: y, and running_mean / running_var after each step. Opset 15 outputs no batch moments.

Capabilities (``CAPABILITIES``): the spec's conventions are epsilon inside the sqrt, a plain EMA
with a constant momentum (no cumulative rule, zero-debias or num_updates schedule) and a BIASED
running variance -- in training mode running_var is updated with "the population variance"
ReduceVar(X) = sum((x_i - mean)^2) / N, no N/(N-1) factor. Running statistics are output only in
training mode, so no inference step can update them. Ranks 2..5 (X is N x C x D1 ... Dn), any
channel axis (transposed to 1), every dtype pair the spec's T / T1 / T2 allow; no extensions.
"""

from __future__ import annotations

import functools
import importlib.metadata

import numpy as np

from bnconform.adapters import (Adapter, Capabilities, Case, Deviation, MatchesVariant, Mismatches, Raises,
                                device_in, input_dtype_in, squares_overflow, updates_on_empty_batch, variant)

ONNX_SPEC = "https://onnx.ai/onnx/operators/onnx__BatchNormalization.html"
OPSET = 15
CHANNEL_AXIS = 1  # ONNX BatchNormalization: X is (N, C, D1, ..., Dn)


@functools.lru_cache(maxsize=None)
def _onnx():
    """(onnx, onnxruntime), imported on first use so that listing adapters stays cheap."""
    import onnx
    import onnxruntime

    return onnx, onnxruntime


def _tensor_type(dtype: str) -> int:
    onnx, _ = _onnx()
    return {"float16": onnx.TensorProto.FLOAT16, "bfloat16": onnx.TensorProto.BFLOAT16,
            "float32": onnx.TensorProto.FLOAT, "float64": onnx.TensorProto.DOUBLE}[dtype]


def build_model(rank: int, channels: int, input_dtype: str, param_dtype: str, training: bool,
                epsilon: float, momentum: float):
    """A one-node BatchNormalization-15 model; batch and spatial dimensions are symbolic."""
    onnx, _ = _onnx()
    helper = onnx.helper
    x_type, p_type = _tensor_type(input_dtype), _tensor_type(param_dtype)
    dims = ["N", channels] + [f"D{i}" for i in range(rank - 2)]
    params = ("scale", "B", "input_mean", "input_var")
    outputs = ["Y", "running_mean", "running_var"] if training else ["Y"]
    node = helper.make_node("BatchNormalization", ["X", *params], outputs, epsilon=epsilon,
                            momentum=momentum, training_mode=int(training))
    graph = helper.make_graph(
        [node], "bnconform_bn",
        [helper.make_tensor_value_info("X", x_type, dims)]
        + [helper.make_tensor_value_info(name, p_type, [channels]) for name in params],
        [helper.make_tensor_value_info("Y", x_type, dims)]
        + [helper.make_tensor_value_info(name, p_type, [channels]) for name in outputs[1:]])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # the oldest IR that carries opset 15; accepted by every current runtime
    onnx.checker.check_model(model)
    return model


def _float32_attributes(case: Case) -> Case:
    """The case as ONNX stores it: epsilon and momentum rounded to float32. The variance kind is set
    to the spec's biased one: a Bessel case runs here only where its results do not depend on the
    kind, and the variant must describe what the runtime computes."""
    config = case.config
    return variant(case, epsilon=float(np.float32(config.epsilon)),
                   epsilon_floor=float(np.float32(config.epsilon_floor)),
                   running_stats={"decay": float(np.float32(config.running_stats.decay)), "variance": "biased"})


BFLOAT16_NOT_IMPLEMENTED = Deviation(
    name="onnxruntime-no-bfloat16-batchnorm-cpu",
    kind="defect",  # the spec the runtime implements allows the dtype; the session cannot be built
    applies=input_dtype_in("bfloat16") & device_in("cpu"),
    behaviour=Raises("NotImplemented", "Could not find an implementation for BatchNormalization"),
    explanation=("the spec allows tensor(bfloat16) for X, but ONNX Runtime's CPU provider registers "
                 "no BatchNormalization(15) kernel for it, so creating the session fails"),
    link=ONNX_SPEC,
)


FLOAT32_ATTRIBUTES = Deviation(
    name="onnx-float32-epsilon-momentum",
    kind="dtype",  # float32-rounded epsilon and momentum on float64 tensors
    applies=input_dtype_in("float64"),
    behaviour=MatchesVariant("results match the variant with epsilon and decay rounded to float32",
                             _float32_attributes),
    explanation=("epsilon and momentum are FLOAT attributes, i.e. 32-bit in AttributeProto, so a double "
                 "model computes with float32(1e-5) = 9.99999975e-06 and float32(0.9): ~1e-7 relative "
                 "error in the running statistics, up to 2e-7 in y, far above float64 tolerances"),
    link="https://github.com/onnx/onnx/issues/3261",
)

EMPTY_BATCH_NAN = Deviation(
    name="onnx-empty-batch-nan-running-stats",
    # defect, like every framework's NaN state from an empty batch: the model defines N == 0 (state
    # unchanged) and the input is valid; raising would be the 'edge' choice, corrupting state is not.
    kind="defect",
    applies=updates_on_empty_batch,
    # y is named too: a later eval step normalizes with the NaN statistics (a consequence, not a
    # second finding); the suite's own empty-batch cases keep later batches empty as well.
    behaviour=Mismatches(("running_mean", "running_var", "y"),
                         "running_mean and running_var outputs are NaN instead of the inputs (and so is y of "
                         "a later step that normalizes with them)"),
    explanation=("the spec's update input * momentum + ReduceMean/ReduceVar(X) * (1 - momentum) has "
                 "no N == 0 rule and the runtime returns 0/0 = NaN statistics"),
    link=ONNX_SPEC,
)

FLOAT32_VARIANCE_OVERFLOW = Deviation(
    name="onnxruntime-float32-variance-overflow",
    kind="precision",  # right formula, an intermediate overflows
    applies=squares_overflow("float32"),
    behaviour=Mismatches(("y", "running_var"), "y = B and running_var = inf"),
    explanation=("the float32 kernel accumulates squared deviations in float32, so inputs of ~1e37 "
                 "give an infinite variance, 1/sqrt(inf) = 0 and y collapses to the bias B"),
    link=ONNX_SPEC,
)


# The spec's conventions (module docstring): eps inside the sqrt, a biased running variance, a
# plain EMA with a constant momentum; running statistics are outputs of training mode only.
CAPABILITIES = Capabilities(
    epsilon_modes=frozenset({"add_inside_sqrt"}), running_variance=frozenset({"biased"}),
    zero_debias=frozenset({False}), num_updates_schedule=frozenset({False}), running_rules=frozenset({"ema"}),
    step_kinds=frozenset({("batch", True), ("batch", False), ("running", False)}))


def schema_defaults() -> dict[str, float]:
    """momentum and epsilon defaults of the opset-15 BatchNormalization schema, as onnx states them.

    The attributes are 32-bit floats (0.9 is stored as 0.89999998); the shortest decimal that
    rounds to the stored float32 is what the schema's author wrote and what users read.
    """
    onnx, _ = _onnx()
    attributes = onnx.defs.get_schema("BatchNormalization", OPSET).attributes

    def read(name):
        return float(str(np.float32(onnx.helper.get_attribute_value(attributes[name].default_value))))
    return {"decay_parameter": read("momentum"), "epsilon": read("epsilon")}


class OnnxRuntimeAdapter(Adapter):
    """ONNX BatchNormalization-15 in an in-memory one-node model, run by onnxruntime."""

    name = "onnxruntime"
    framework = "onnxruntime"
    extra = "onnx"
    requires = ("onnx", "onnxruntime")
    device_kinds = ("cpu", "cuda")
    deviations = (BFLOAT16_NOT_IMPLEMENTED, FLOAT32_ATTRIBUTES, EMPTY_BATCH_NAN, FLOAT32_VARIANCE_OVERFLOW)
    capabilities = CAPABILITIES
    decay_parameter = ("momentum", "old")  # spec: running = input * momentum + current * (1 - momentum)
    notes = ("opset 15 one-node model; channel axis other than 1 by np.transpose; scale/center off "
             "as ones/zeros inputs; state carried between steps by the adapter (stateless op)")

    def __init__(self):
        self._sessions: dict = {}

    def framework_version(self) -> str:
        version = super().framework_version()
        try:
            return f"{version} (onnx {importlib.metadata.version('onnx')}, opset {OPSET})"
        except importlib.metadata.PackageNotFoundError:
            return version

    def framework_defaults(self) -> dict[str, float]:
        return schema_defaults()

    def devices(self) -> list[str]:
        _, ort = _onnx()
        return ["cpu"] + (["cuda"] if "CUDAExecutionProvider" in ort.get_available_providers() else [])

    def _session(self, case: Case, training: bool, device: str):
        """An InferenceSession per (rank, C, dtypes, mode, knobs, device), built once."""
        config = case.config
        key = (case.rank, case.channels, config.input_dtype, config.param_dtype, training,
               config.effective_epsilon, config.running_stats.decay, device)
        if key not in self._sessions:
            _, ort = _onnx()
            model = build_model(case.rank, case.channels, config.input_dtype, config.param_dtype,
                                training, config.effective_epsilon, config.running_stats.decay)
            providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
            self._sessions[key] = ort.InferenceSession(model.SerializeToString(), providers=providers)
        return self._sessions[key]

    def run(self, case: Case, device: str) -> list[dict[str, np.ndarray]]:
        state = self._initial_feeds(case)
        results = []
        for step in case.steps:
            y, new_state = self._run_step(case, step, state, device)
            if step.update_running_stats:
                state = new_state
            results.append({"y": y, "running_mean": state["input_mean"], "running_var": state["input_var"]})
        return results

    @staticmethod
    def _initial_feeds(case: Case) -> dict[str, np.ndarray]:
        """scale, B, input_mean, input_var; ones/zeros stand for a disabled gamma/beta."""
        s = case.initial_state
        scale = s.gamma if case.config.scale else np.ones_like(s.gamma)
        bias = s.beta if case.config.center else np.zeros_like(s.beta)
        return {"scale": scale, "B": bias, "input_mean": s.running_mean, "input_var": s.running_var}

    def _run_step(self, case: Case, step, state: dict, device: str):
        """(y in the case's layout, the state the op outputs: unchanged in inference mode)."""
        order = _to_channel_axis_1(step.x.ndim, case.config.channel_axis)
        x = np.ascontiguousarray(np.transpose(step.x, order))
        outputs = self._session(case, step.is_training, device).run(None, {"X": x, **state})
        y = np.transpose(outputs[0], np.argsort(order))
        if not step.is_training:
            return y, state
        return y, {**state, "input_mean": outputs[1], "input_var": outputs[2]}


def _to_channel_axis_1(rank: int, channel_axis: int) -> list[int]:
    """The axis order that moves ``channel_axis`` to position 1, keeping the others in order."""
    rest = [a for a in range(rank) if a != channel_axis]
    return [rest[0], channel_axis, *rest[1:]]
