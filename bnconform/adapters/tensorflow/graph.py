"""Shared machinery of the TF1 graph-mode adapters (tf.v1.layers, tf_slim, tflearn).

A TF1 batch-norm layer is built once into its own ``tf.Graph`` with a ``tf.compat.v1.Session``;
a :class:`GraphLayer` keeps that graph, the input placeholder, the layer's outputs for the
training and inference calls, its update ops, and one assign op per variable, so a case only
feeds values (graph building costs tens of milliseconds, a ``session.run`` well under one).
The input placeholder leaves every dimension but the channel axis open, so one graph serves
every batch shape of a configuration.

The update ops the layer put in ``tf.GraphKeys.UPDATE_OPS`` run only when a step asks for an
update (TF1 semantics: nothing updates unless you run the ops); the running statistics are read
after them through reads that carry a control dependency on those ops.

Importing this module does not import TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ...dtypes import numpy_dtype
from .common import tf, tf_device_scope, to_tf_dtype

# Canonical state names -> the names the layers give their variables.
VARIABLE_ROLES = ("gamma", "beta", "moving_mean", "moving_variance")
STATE_OF_ROLE = {"gamma": "gamma", "beta": "beta", "moving_mean": "running_mean", "moving_variance": "running_var"}


@dataclass
class BuiltLayer:
    """What a builder returns: the layer's outputs, update ops and variables by role."""

    y_train: object
    y_eval: object
    update_ops: list
    variables: dict = field(default_factory=dict)  # role (VARIABLE_ROLES) -> tf.Variable
    fused: bool | None = None  # which path the layer took (set from the built graph)
    weights: object = None  # placeholder for per-sample weights (tf_slim batch_weights), if any


def variables_by_role(variables) -> dict:
    """Map a layer's variables to roles by their names (".../gamma:0" -> "gamma")."""
    found = {}
    for variable in variables:
        leaf = variable.name.split("/")[-1].split(":")[0]
        if leaf in VARIABLE_ROLES:
            found[leaf] = variable
    return found


def uses_fused_kernel(graph) -> bool:
    """True if the graph normalizes with a FusedBatchNorm kernel (which path the layer took)."""
    return any(op.type.startswith("FusedBatchNorm") for op in graph.get_operations())


def _session(graph):
    # One thread each: the cases are tiny and the machine is shared.
    config = tf().compat.v1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)
    return tf().compat.v1.Session(graph=graph, config=config)


class GraphLayer:
    """One built TF1 layer configuration: graph, session, placeholders, cached fetches."""

    def __init__(self, build: Callable, input_dtype: str, rank: int, channel_axis: int, channels: int, device: str):
        v1 = tf().compat.v1
        self.graph = tf().Graph()
        with self.graph.as_default(), tf_device_scope(device):
            shape = [None] * rank
            shape[channel_axis] = channels
            self.x = v1.placeholder(to_tf_dtype(input_dtype), shape, name="x")
            self.built = build(self.x)
            self._make_loaders()
            self._make_reads()
            init = v1.global_variables_initializer()
        self.built.fused = uses_fused_kernel(self.graph)
        self.session = _session(self.graph)
        self.session.run(init)
        self._warm_up(input_dtype, rank, channel_axis, channels)

    def _warm_up(self, input_dtype, rank, channel_axis, channels):
        """Run every fetch signature once: TF1 builds an executor per signature on first use
        (~15 ms each), so a later case with this configuration only pays the run itself.
        The values written here are overwritten by ``load`` before each case."""
        shape = [2] * rank
        shape[channel_axis] = channels
        x = np.ones(shape, dtype=numpy_dtype(input_dtype))
        feeds = {ph: np.ones(ph.shape.as_list(), dtype=ph.dtype.as_numpy_dtype) for ph in self.load_feeds.values()}
        self.session.run(self.load_op, feeds)
        for training, update in ((True, True), (True, False), (False, False)):
            self.step(x, training, update)

    def _make_loaders(self):
        v1 = tf().compat.v1
        self.load_feeds, assigns = {}, []
        for role, variable in self.built.variables.items():
            value = v1.placeholder(variable.dtype.base_dtype, variable.shape, name=f"load_{role}")
            self.load_feeds[role] = value
            assigns.append(variable.assign(value))
        # State the layer keeps beside its variables (zero-debias "biased"/"local_step"): fresh per case.
        roles = set(map(id, self.built.variables.values()))
        extra = [v for v in v1.global_variables() if id(v) not in roles]
        self.load_op = tf().group(*assigns, v1.variables_initializer(extra))

    def _make_reads(self):
        stats = [self.built.variables[r] for r in ("moving_mean", "moving_variance")]
        self.reads = [v.read_value() for v in stats]
        with tf().control_dependencies(self.built.update_ops):
            self.reads_after_update = [v.read_value() for v in stats]

    def load(self, state, param_dtype: str) -> None:
        """Assign gamma, beta, moving mean and variance from a canonical :class:`State`."""
        dtype = numpy_dtype(param_dtype)
        feeds = {ph: np.asarray(getattr(state, STATE_OF_ROLE[role]), dtype=dtype) for role, ph in self.load_feeds.items()}
        self.session.run(self.load_op, feeds)

    def step(self, x, training: bool, update: bool, weights=None) -> dict:
        """Run one call; ``update`` runs the UPDATE_OPS in the same session.run."""
        y = self.built.y_train if training else self.built.y_eval
        reads = self.reads_after_update if update else self.reads
        feeds = {self.x: x}
        if self.built.weights is not None:
            # A weighted layer always takes weights; a step without them weighs every sample 1.
            feeds[self.built.weights] = np.ones(x.shape[0], x.dtype) if weights is None else weights
        fetched = self.session.run([y] + reads, feeds)
        return {"y": _plain(fetched[0]), "running_mean": _plain(fetched[1]), "running_var": _plain(fetched[2])}


def _plain(value) -> np.ndarray:
    """bfloat16 results widened to float32 (exact) so the comparison can read them."""
    value = np.asarray(value)
    return value.astype(np.float32) if value.dtype.name == "bfloat16" else value


class GraphCache:
    """GraphLayer per key; the key must hold every knob the builder bakes into the graph."""

    def __init__(self):
        self._layers = {}

    def get(self, key, make: Callable[[], GraphLayer]) -> GraphLayer:
        if key not in self._layers:
            self._layers[key] = make()
        return self._layers[key]


def run_case(layer: GraphLayer, case) -> list[dict]:
    """Load the initial state, then run every step as the case says."""
    layer.load(case.initial_state, case.config.param_dtype)
    dtype = numpy_dtype(case.config.input_dtype)
    results = []
    for s in case.steps:
        weights = None if s.sample_weights is None else np.asarray(s.sample_weights, dtype=dtype)
        results.append(layer.step(np.asarray(s.x, dtype=dtype), s.is_training, s.update_running_stats, weights))
    return results


def inference_update_reason(case, api: str) -> str | None:
    """TF1 layers add update ops only for the training call: an inference step cannot update."""
    if any(not s.is_training and s.update_running_stats for s in case.steps):
        return f"{api} adds update ops only when training=True; an inference step cannot update the moving statistics"
    return None


# --- Case predicates shared by the TF1 adapters' declared deviations -------------------------

def updating_counts(case) -> list[int]:
    """N of every step that normalizes with the batch and updates the moving statistics."""
    return [n for s, n in zip(case.steps, case.reduce_counts()) if s.is_training and s.update_running_stats]


def updates_empty_batch(case) -> bool:
    """Some updating training step has N == 0 (its moments are 0/0 = NaN)."""
    return 0 in updating_counts(case)


def batch_variance_overflows(case) -> bool:
    """Some training step's true batch variance exceeds the largest float32 (for non-float64 input)."""
    if case.config.input_dtype == "float64":
        return False
    limit = float(np.finfo(np.float32).max)
    for step in case.steps:
        var = step.expected.get("batch_var")
        if step.is_training and var is not None and np.any(np.isfinite(var) & (np.abs(var) > limit)):
            return True
    return False


def updates_visibly(case, min_count: int = 2) -> bool:
    """Some update folds in N >= min_count values with a decay < 1 (so the variance kind shows)."""
    decay = case.config.running_stats.decay
    return decay is not None and decay < 1 and any(n >= min_count for n in updating_counts(case))


def float32_rounded_decay(decay: float) -> float:
    """The decay whose 1 - decay equals float32(1.0 - decay): what a float32 constant turns it into."""
    return 1.0 - float(np.float32(1.0 - decay))
