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

Unsupported (no attribute for it): epsilon outside the sqrt or max(var, eps); the cumulative
rule; zero-debias; a num_updates schedule; an inference step that updates the statistics;
rank < 2; Config extensions (renorm, ghost batches, sample weights).
"""

from __future__ import annotations

import functools
import importlib.metadata

import numpy as np

from bnconform.adapters.base import Adapter, Deviation, MatchesVariant, Mismatches, Raises, Unsupported, variant
from bnconform.model import Case

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


def _bessel_changes_running_var(case: Case) -> bool:
    """A Bessel case whose running variance would differ if the biased variance were used."""
    rs = case.config.running_stats
    if rs.variance != "bessel" or rs.rule != "ema" or rs.decay == 1.0:
        return False
    return any(s.is_training and s.update_running_stats and n >= 2
               for s, n in zip(case.steps, case.reduce_counts()))


def _empty_training_update(case: Case) -> bool:
    return any(s.is_training and s.update_running_stats and n == 0
               for s, n in zip(case.steps, case.reduce_counts()))


def _float32_squares_overflow(case: Case) -> bool:
    """A float32 training batch whose squared values exceed the float32 range."""
    if case.config.input_dtype != "float32":
        return False
    limit = np.sqrt(np.finfo(np.float32).max)  # infinities are another case: they are not overflow
    return any(s.is_training and np.any(np.abs(s.x[np.isfinite(s.x)].astype(np.float64)) > limit)
               for s in case.steps)


def _float32_attributes(case: Case) -> Case:
    """The case as ONNX stores it: epsilon and momentum rounded to float32, population variance."""
    config = case.config
    return variant(case, epsilon=float(np.float32(config.epsilon)),
                   epsilon_floor=float(np.float32(config.epsilon_floor)),
                   running_stats={"decay": float(np.float32(config.running_stats.decay)), "variance": "biased"})


POPULATION_RUNNING_VARIANCE = Deviation(
    name="onnx-population-running-variance",
    applies_to="EMA cases asking for a Bessel-corrected running variance with a training update of N >= 2",
    applies=lambda case, device: _bessel_changes_running_var(case),
    behaviour=MatchesVariant("running_var matches the BIASED-variance variant",
                             lambda c: variant(c, running_stats={"variance": "biased"})),
    explanation=("the spec updates running_var with ReduceVar, 'the population variance ... "
                 "sum(sqrd(x_i - x_avg)) / N' (no N/(N-1) factor, unlike torch.nn.BatchNorm)"),
    link=ONNX_SPEC,
)

BFLOAT16_NOT_IMPLEMENTED = Deviation(
    name="onnxruntime-no-bfloat16-batchnorm-cpu",
    applies_to="bfloat16 inputs on the CPU execution provider",
    applies=lambda case, device: case.config.input_dtype == "bfloat16" and device == "cpu",
    behaviour=Raises("NotImplemented", "Could not find an implementation for BatchNormalization"),
    explanation=("the spec allows tensor(bfloat16) for X, but ONNX Runtime's CPU provider registers "
                 "no BatchNormalization(15) kernel for it, so creating the session fails"),
    link=ONNX_SPEC,
)


FLOAT32_ATTRIBUTES = Deviation(
    name="onnx-float32-epsilon-momentum",
    applies_to="float64 cases (inputs and parameters in double)",
    applies=lambda case, device: case.config.input_dtype == "float64",
    behaviour=MatchesVariant("results match the variant with epsilon and decay rounded to float32 "
                             "(and the population running variance)", _float32_attributes),
    explanation=("epsilon and momentum are FLOAT attributes, i.e. 32-bit in AttributeProto, so a double "
                 "model computes with float32(1e-5) = 9.99999975e-06 and float32(0.9): ~1e-7 relative "
                 "error in the running statistics, up to 2e-7 in y, far above float64 tolerances"),
    link="https://github.com/onnx/onnx/issues/3261",
)

EMPTY_BATCH_NAN = Deviation(
    name="onnx-empty-batch-nan-running-stats",
    applies_to="a training step (with update) on an empty batch (N = 0)",
    applies=lambda case, device: _empty_training_update(case),
    behaviour=Mismatches(("running_mean", "running_var"),
                         "running_mean and running_var outputs are NaN instead of the inputs"),
    explanation=("the spec's update input * momentum + ReduceMean/ReduceVar(X) * (1 - momentum) has "
                 "no N == 0 rule and the runtime returns 0/0 = NaN statistics"),
    link=ONNX_SPEC,
)

FLOAT32_VARIANCE_OVERFLOW = Deviation(
    name="onnxruntime-float32-variance-overflow",
    applies_to="float32 training batches whose finite squared values exceed float32 max (|x| > 1.8e19)",
    applies=lambda case, device: _float32_squares_overflow(case),
    behaviour=Mismatches(("y", "running_var"), "y = B and running_var = inf"),
    explanation=("the float32 kernel accumulates squared deviations in float32, so inputs of ~1e37 "
                 "give an infinite variance, 1/sqrt(inf) = 0 and y collapses to the bias B"),
    link=ONNX_SPEC,
)


class OnnxRuntimeAdapter(Adapter):
    """ONNX BatchNormalization-15 in an in-memory one-node model, run by onnxruntime."""

    name = "onnxruntime"
    framework = "onnxruntime"
    extra = "onnx"
    requires = ("onnx", "onnxruntime")
    device_kinds = ("cpu", "cuda")
    deviations = (BFLOAT16_NOT_IMPLEMENTED, FLOAT32_ATTRIBUTES, EMPTY_BATCH_NAN, FLOAT32_VARIANCE_OVERFLOW,
                  POPULATION_RUNNING_VARIANCE)
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

    def devices(self) -> list[str]:
        _, ort = _onnx()
        return ["cpu"] + (["cuda"] if "CUDAExecutionProvider" in ort.get_available_providers() else [])

    def supports(self, case: Case, device: str) -> str | None:
        config, rs = case.config, case.config.running_stats
        if config.epsilon_mode != "add_inside_sqrt":
            return f"ONNX BatchNormalization adds epsilon inside the sqrt only; no {config.epsilon_mode} option"
        if rs.rule == "cumulative":
            return "ONNX BatchNormalization has no cumulative-average option (momentum is a fixed EMA weight)"
        if rs.zero_debias:
            return "ONNX BatchNormalization has no zero-debias option (plain EMA of the input statistics)"
        if rs.num_updates_schedule:
            return "ONNX BatchNormalization has no num_updates decay schedule (momentum is a constant attribute)"
        if case.rank < 2:
            return "ONNX BatchNormalization needs X of rank >= 2 (N x C x D1 ... Dn)"
        if any(not s.is_training and s.update_running_stats for s in case.steps):
            return "ONNX BatchNormalization outputs running statistics only in training mode (training_mode=1)"
        return None

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
        reason = self.supports(case, device)
        if reason:
            raise Unsupported(reason)
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
