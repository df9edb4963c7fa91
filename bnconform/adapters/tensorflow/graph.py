"""Shared machinery of the TF1 graph-mode adapters (tf.v1.layers, tf_slim, tflearn).

A TF1 batch-norm layer is built once into its own ``tf.Graph`` with a ``tf.compat.v1.Session``;
a :class:`GraphLayer` keeps that graph, the input placeholder, the layer's outputs for the
training and inference calls, its update ops, and one assign op per variable, so a case only
feeds values (building a graph costs tens of milliseconds, a session callable well under one).
The input placeholder leaves every dimension but the channel axis open, so one graph serves
every batch shape of a configuration.

The decay can be fed too (:class:`DecayFeed`): the layers take it as a tensor (``1.0 - decay``
is all they do with it in graph mode), so one graph serves every decay of a configuration. The
feed must reproduce, bit for bit, what the layer does with a Python float, so the builder says
which dtype the layer first turns the float into on its path:

* ``"float64"``: the layer computes ``1.0 - decay`` in Python (double) and converts the result
  to the variable dtype; a float64 tensor does the same arithmetic, then the same cast. Valid
  for float32 variables; float64 variables keep the float32 rounding of the Python path
  (a declared deviation), so their decay stays a Python float baked into the graph.
* ``"float32"``: the Keras fused path converts the float to a float32 tensor first
  (``tf.convert_to_tensor(self.momentum)``), then subtracts it from 1.0 in float32.

The update ops the layer put in ``tf.GraphKeys.UPDATE_OPS`` run only when a step asks for an
update (TF1 semantics: nothing updates unless you run the ops); the running statistics are read
after them through reads that carry a control dependency on those ops.

Gradients: the first step with an upstream ``dy`` adds a ``dy`` placeholder and
``tf.gradients(y, [x, gamma, beta], grad_ys=dy)`` for the training and the inference output to
the graph (gamma / beta: the layer's variables, absent when the layer has none), fetched by
their own session callables in the same run as y and the update ops: forward-only steps keep
running exactly the ops they ran before.

Importing this module does not import TensorFlow.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ...caseformat.dtypes import numpy_dtype
from ..base import Adapter
from .common import GRADIENT_NAMES, graph_gradients, tf, tf_device_scope, tf_devices, to_tf_dtype

# Canonical state names -> the names the layers give their variables.
VARIABLE_ROLES = ("gamma", "beta", "moving_mean", "moving_variance")
STATE_OF_ROLE = {"gamma": "gamma", "beta": "beta", "moving_mean": "running_mean", "moving_variance": "running_var"}
STEP_SIGNATURES = ((True, True), (True, False), (False, False))  # (training, update) a case may run


@dataclass
class BuiltLayer:
    """What a builder returns: the layer's outputs, update ops and variables by role."""

    y_train: object
    y_eval: object
    update_ops: list
    variables: dict = field(default_factory=dict)  # role (VARIABLE_ROLES) -> tf.Variable
    fused: bool | None = None  # which path the layer took (set from the built graph)
    weights: object = None  # placeholder for per-sample weights (tf_slim batch_weights), if any


@dataclass(frozen=True)
class DecayFeed:
    """How a graph takes the decay: ``dtype`` of its scalar placeholder, or None (a Python
    float ``value`` baked into the graph). See the module docstring for which is exact where."""

    dtype: str | None
    value: float | None = None

    def key(self) -> tuple:
        return (self.dtype, None if self.dtype else self.value)


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


def tiny_graph_session(graph):
    """A session for a graph of a few dozen ops: one thread each (the cases are tiny and the
    machine is shared), and no grappler pass (it costs more than the graph's run)."""
    v1 = tf().compat.v1
    config = v1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    return v1.Session(graph=graph, config=config)


def caller_thread_callable(session, fetches, feed_list):
    """``session.make_callable`` whose runs execute in the calling thread (RunOptions
    inter_op_thread_pool=-1): no hand-off to a pool thread, which on a loaded machine costs
    more than these graphs' whole run. Same kernels, so the same numbers."""
    run = session.make_callable(fetches, feed_list, accept_options=True)
    options = tf().compat.v1.RunOptions(inter_op_thread_pool=-1)
    return lambda *args: run(*args, options=options)


class GraphLayer:
    """One built TF1 layer configuration: graph, session, placeholders and session callables."""

    builds = 0  # graphs built in this process (tests check that cases share them)

    def __init__(self, build: Callable, input_dtype: str, rank: int, channel_axis: int, channels: int,
                 device: str, decay: DecayFeed):
        v1 = tf().compat.v1
        GraphLayer.builds += 1
        self.device, self.dy, self._gradients, self._gradient_runs = device, None, {}, {}  # gradient ops: on first use
        # TensorFlow's own NumPy type for the input dtype: before 2.13 its bfloat16 is not ml_dtypes'
        # (numpy_dtype's), and NumPy has no cast between the two (as_feed goes through float32).
        self.graph, self.input_dtype = tf().Graph(), np.dtype(to_tf_dtype(input_dtype).as_numpy_dtype)
        with self.graph.as_default(), tf_device_scope(device):
            shape = [None] * rank
            shape[channel_axis] = channels
            self.x = v1.placeholder(to_tf_dtype(input_dtype), shape, name="x")
            self.decay = v1.placeholder(to_tf_dtype(decay.dtype), [], name="decay") if decay.dtype else None
            self.built = build(self.x, self.decay if decay.dtype else decay.value)
            self._make_loaders()
            self._make_reads()
            init = v1.global_variables_initializer()
        self.built.fused = uses_fused_kernel(self.graph)
        self.session = tiny_graph_session(self.graph)
        self.session.run(init)
        self._make_callables()
        self._warm_up(rank, channel_axis, channels)

    def _make_loaders(self):
        v1 = tf().compat.v1
        self.load_feeds, assigns = [], []
        for role, variable in self.built.variables.items():
            value = v1.placeholder(variable.dtype.base_dtype, variable.shape, name=f"load_{role}")
            self.load_feeds.append((role, value))
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

    def _inputs(self) -> list:
        """The placeholders every step feeds, in callable order: x, then decay and weights if any."""
        return [p for p in (self.x, self.decay, self.built.weights) if p is not None]

    def _make_callables(self):
        """Session callables skip session.run's per-call feed/fetch parsing (~0.1 ms each)."""
        make = functools.partial(caller_thread_callable, self.session)
        self._load = make(self.load_op, [p for _, p in self.load_feeds])
        self._steps = {}
        for training, update in STEP_SIGNATURES:
            y = self.built.y_train if training else self.built.y_eval
            self._steps[training, update] = make([y] + (self.reads_after_update if update else self.reads),
                                                 self._inputs())

    def _warm_up(self, rank, channel_axis, channels):
        """Run every callable once: TF1 builds an executor per signature on first use (milliseconds),
        so a later case with this configuration only pays the run itself. ``load`` overwrites
        whatever the dummy update wrote before each case."""
        shape = [2] * rank
        shape[channel_axis] = channels
        self._load(*[np.ones(p.shape.as_list(), p.dtype.as_numpy_dtype) for _, p in self.load_feeds])
        x = np.ones(shape, self.input_dtype)
        for training, update in STEP_SIGNATURES:
            self.step(x, training, update, decay=0.5)

    def _gradient_callable(self, training: bool, update: bool):
        """A callable returning {output name: value}: y, the running statistics and the gradients.
        The gradient ops of y_train / y_eval and each step kind's callable are added to the graph
        the first time a step of that kind asks for them (module docstring)."""
        if (training, update) not in self._gradient_runs:
            y = self.built.y_train if training else self.built.y_eval
            if training not in self._gradients:
                variables = self.built.variables
                with self.graph.as_default(), tf_device_scope(self.device):
                    if self.dy is None:
                        self.dy = tf().compat.v1.placeholder(self.x.dtype, self.x.shape, name="dy")
                    self._gradients[training] = graph_gradients(y, self.dy, self.x, variables.get("gamma"),
                                                                variables.get("beta"))
            mean, var = self.reads_after_update if update else self.reads
            fetches = {"y": y, "running_mean": mean, "running_var": var, **self._gradients[training]}
            self._gradient_runs[training, update] = caller_thread_callable(self.session, fetches,
                                                                           self._inputs() + [self.dy])
        return self._gradient_runs[training, update]

    def load(self, state, param_dtype: str) -> None:
        """Assign gamma, beta, moving mean and variance from a canonical :class:`State`."""
        dtype = numpy_dtype(param_dtype)
        self._load(*[np.asarray(getattr(state, STATE_OF_ROLE[role]), dtype=dtype) for role, _ in self.load_feeds])

    def step(self, x, training: bool, update: bool, weights=None, decay: float | None = None, dy=None) -> dict:
        """Run one call; ``update`` runs the UPDATE_OPS in the same session run; with ``dy`` the
        same run also returns dx, dgamma, dbeta (None for a parameter the layer does not have)."""
        args = [x]
        if self.decay is not None:
            args.append(np.asarray(decay, self.decay.dtype.as_numpy_dtype))
        if self.built.weights is not None:
            # A weighted layer always takes weights; a step without them weighs every sample 1.
            args.append(np.ones(x.shape[0], x.dtype) if weights is None else weights)
        if dy is None:
            y, mean, var = self._steps[training, update](*args)
            return {"y": _plain(y), "running_mean": _plain(mean), "running_var": _plain(var)}
        fetched = self._gradient_callable(training, update)(*args, dy)
        return {**dict.fromkeys(GRADIENT_NAMES), **{k: _plain(v) for k, v in fetched.items()}}


def as_feed(value, dtype: np.dtype) -> np.ndarray:
    """``value`` as an array of ``dtype`` (a placeholder's own NumPy type). TensorFlow < 2.13 has a
    bfloat16 type of its own, and NumPy casts neither way between it and ml_dtypes.bfloat16: such a
    value goes through float32, which holds every bfloat16 exactly."""
    value = np.asarray(value)
    if dtype.name == "bfloat16" and value.dtype != dtype:
        value = value.astype(np.float32)
    return value.astype(dtype, copy=False)


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
    """Load the initial state, then run every step as the case says (the decay fed if taken)."""
    layer.load(case.initial_state, case.config.param_dtype)
    dtype, decay = layer.input_dtype, case.config.running_stats.decay
    results = []
    for s in case.steps:
        weights = None if s.sample_weights is None else as_feed(s.sample_weights, dtype)
        dy = None if s.dy is None else as_feed(s.dy, dtype)
        results.append(layer.step(as_feed(s.x, dtype), s.is_training, s.update_running_stats, weights, decay,
                                  dy))
    return results


def decay_feed(case, keras_fused: bool) -> DecayFeed:
    """How to pass this case's decay exactly (module docstring): baked for float64 variables, a
    float32 tensor on the Keras fused path, a float64 tensor elsewhere."""
    decay = case.config.running_stats.decay
    if case.config.param_dtype == "float64":
        return DecayFeed(None, decay)
    return DecayFeed("float32" if keras_fused else "float64")


class GraphLayerAdapter(Adapter):
    """A TF1 layer adapter: one cached :class:`GraphLayer` per configuration, every case fed to it.

    A subclass sets three functions of its module as static methods: ``graph_key(case, device)``
    (every knob the graph bakes in), ``build_graph(case, device)`` (the GraphLayer) and
    ``takes_fused_path(case)`` (the path its capability table assumes). A built graph on the
    other path raises: the case would be judged under the wrong running-variance convention.
    """

    extra = "tensorflow"
    device_kinds = ("cpu", "cuda")
    # The v1 layers live in tf_keras on TensorFlow >= 2.16 (TF_USE_LEGACY_KERAS=1 before TF is
    # imported). Their own host, not the eager adapters': building a tf_keras layer inside a
    # tf.compat.v1.Graph invalidates every tf_keras layer made outside one ("Your Layer or Model is
    # in an invalid state"), and the tf_keras rows keep their layers across cases.
    environment = {"TF_USE_LEGACY_KERAS": "1"}
    graph_key: Callable
    build_graph: Callable
    takes_fused_path: Callable

    def __init__(self):
        self._cache = GraphCache()

    def devices(self):
        return tf_devices()

    def run(self, case, device):
        layer = self._cache.get(self.graph_key(case, device), lambda: self.build_graph(case, device))
        if layer.built.fused != self.takes_fused_path(case):
            raise RuntimeError(f"Expected: fused path {self.takes_fused_path(case)} (adapter's rule). "
                               f"Received: fused kernel in graph {layer.built.fused}")
        return run_case(layer, case)
