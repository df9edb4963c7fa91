"""tf.nn.moments + tf.nn.batch_normalization + tf.train.ExponentialMovingAverage (hand-rolled BN).

The tutorial-era TensorFlow BN: batch moments from ``tf.nn.moments``, running statistics kept by
``ExponentialMovingAverage.apply([batch_mean, batch_var])`` and read back with ``ema.average``.
It runs as a TF1 graph (``tf.compat.v1.Graph`` + ``Session``) because ``apply()`` accepts the
moment *tensors* only in graph mode, and ``zero_debias`` only acts on averages of tensors: in eager
mode apply() takes Variables, whose shadows start from the variable and are never debiased.
One graph per (shape signature, dtypes, switches, device) is built once and reused; per case the
variables are re-initialized and the shadows set to the case's initial running statistics.

Translation table (canonical knob -> framework argument):

==========================  =====================================================================
channel_axis                ``tf.nn.moments(x, axes=<every other axis>)``; params reshaped to
                            ``[1,..,C,..,1]`` for ``tf.nn.batch_normalization``
epsilon (+ epsilon_floor)   ``variance_epsilon=config.effective_epsilon`` (added inside rsqrt)
scale / center              ``scale=gamma`` / ``offset=beta``, or ``None`` when switched off
decay (weight on old)       ``ExponentialMovingAverage(decay=decay)`` (TF's decay is old-weight)
zero_debias                 ``ExponentialMovingAverage(zero_debias=True)`` (tensor averages)
num_updates_schedule        ``num_updates=<int64 step variable>``, starting at state.num_updates
                            and incremented after each apply() (as a global step would be)
initial running stats       the EMA shadow variables (``ema.average(t)``) are assigned them
batch step, update          y from the moments; then ``apply()`` (run as a control dependency)
batch step, no update       y from the moments; ``apply()`` not run
running step                y normalized with ``ema.average(mean)``, ``ema.average(var)``
half inputs                 the EMA averages the moments as tf.nn.moments returns them (half
                            dtype, so the shadows are half too: the API has no dtype argument);
                            they are cast (``tf.cast``) to the param dtype only to normalize
                            (with half params everything stays half)
==========================  =====================================================================

Capabilities: the running variance is the EMA of what ``tf.nn.moments`` returns, the biased
variance (a convention); zero_debias and the num_updates schedule both ways; the EMA rule only
(decay is a fixed weight, optionally capped by num_updates); epsilon inside the sqrt; no
inference step that updates (not translated: no case asks for one); no model extensions.

Gradients: the first step with an upstream ``dy`` adds to the case's graph a ``dy`` placeholder
and ``tf.gradients(y, [x, gamma, beta], grad_ys=dy)`` for the batch-normalized y (through
``tf.nn.moments``: dx carries the terms through the batch mean and variance) and for the y
normalized with the EMA averages (constants for x); gamma and beta are the 1-D fed placeholders,
reshaped inside the graph. Those are fetched in the same session run that produces y (and, on
an updating step, runs apply()), by their own session callables: forward-only steps run exactly
the ops they ran before.
"""

from __future__ import annotations

import functools

import numpy as np

from ...judging.capabilities import Capabilities
from ...judging.selectors import (changes_results, input_dtype_in, param_dtype_in, updates_on_empty_batch,
                                  updates_running_stats, where)
from ...reference.moments import reduction_axes
from ..base import Adapter, Deviation, MatchesVariant, Mismatches, variant
from ..findings import empty_batch_nan_running_stats
from .common import (EPS_INSIDE, GRADIENT_NAMES, TF_ENVIRONMENT, channel_shape, empty_batch_dgamma_nan, graph_gradients,
                     half_parameter_gradients, infinite_mean_nan, signature_default, tf, tf_device_scope, tf_devices,
                     to_numpy, to_tf_dtype)
from .graph import as_feed, caller_thread_callable, tiny_graph_session
from .moments_findings import (NN_SOURCE, bfloat16_mean_accumulated_in_bfloat16, bfloat16_moments_shift_y,
                               half_inputs_half_arithmetic, half_parameters_half_arithmetic, moments_overflow)

EMA_SOURCE = "https://github.com/tensorflow/tensorflow/blob/master/tensorflow/python/training/moving_averages.py"

EMA_CAPABILITIES = Capabilities(
    epsilon_modes=EPS_INSIDE, running_variance=frozenset({"biased"}), running_rules=frozenset({"ema"}),
    step_kinds=frozenset({("batch", True), ("batch", False), ("running", False)}),
    gradients=frozenset({"batch", "running"}))



def _float32_decay(decay: float) -> float:
    """What apply() makes of a Python decay: a float32 tensor, so 1 - decay is 1 - float32(decay)."""
    return float(np.float32(decay))


@where("float64 shadows updated (N >= 1) with a decay that float32 does not hold exactly (e.g. 0.9)")
def _float64_decay_rounds(case) -> bool:
    decay = case.config.running_stats.decay
    if case.config.param_dtype != "float64" or decay is None or _float32_decay(decay) == decay:
        return False
    return any(s.is_training and s.update_running_stats and n >= 1 for s, n in zip(case.steps, case.reduce_counts()))


def _float32_decay_variant(case):
    return variant(case, running_stats={"decay": _float32_decay(case.config.running_stats.decay)})


class TfEmaAdapter(Adapter):
    """tf.nn.moments + tf.nn.batch_normalization with ExponentialMovingAverage running statistics."""
    environment = TF_ENVIRONMENT

    name = "tf.nn+ema"
    framework = "tensorflow"
    extra = "tensorflow"
    requires = ("tensorflow",)
    device_kinds = ("cpu", "cuda")
    notes = ("TF1 graph + Session (apply() on moment tensors); shadows start at the case's running stats; "
             "half-input moments (and so the shadows) stay half, cast to float32 only to normalize")
    decay_parameter = ("decay", "old")
    capabilities = EMA_CAPABILITIES
    deviations = (
        moments_overflow("tf-ema-variance-overflow", ("y", "batch_var", "running_mean", "running_var", "dx", "dgamma")),
        empty_batch_nan_running_stats(
            "tf-ema-empty-batch-nan",
            "tf.nn.moments of an empty batch is reduce_mean over 0 elements = NaN, and "
            "ExponentialMovingAverage.apply() folds it into the shadow variables",
            NN_SOURCE),
        Deviation(
            name="tf-ema-float32-decay",
            kind="dtype",
            applies=_float64_decay_rounds & ~updates_on_empty_batch
            & changes_results(_float32_decay_variant, "the float32-rounded decay changes the results"),
            behaviour=MatchesVariant("decay rounded to float32 (1 - 0.9 = 0.100000024)", _float32_decay_variant),
            explanation="ExponentialMovingAverage.apply() converts decay to a float32 tensor "
                        "(1 - 0.9 = 0.100000024) before casting it to the float64 variable dtype",
            link=EMA_SOURCE),
        Deviation(
            name="tf-ema-half-precision-running-stats",
            kind="dtype",
            applies=input_dtype_in("float16", "bfloat16") & param_dtype_in("float32") & updates_running_stats,
            behaviour=Mismatches(("running_mean", "running_var"),
                                 "running statistics carry half-precision rounding (~1e-3 relative)"),
            explanation="tf.nn.moments returns float16/bfloat16 moments for half inputs and "
                        "ExponentialMovingAverage keeps its shadows (and does its arithmetic) in the dtype of "
                        "the tensors it averages, while the case expects float32 running statistics",
            link=EMA_SOURCE),
        bfloat16_moments_shift_y("tf-ema-bfloat16-moments-shift-y", EMA_SOURCE),
        bfloat16_mean_accumulated_in_bfloat16("tf-ema-bfloat16-mean-accumulated-in-bfloat16",
                                              ("y", "batch_mean", "batch_var", "running_mean", "running_var")),
        half_parameter_gradients("tf.nn+ema"),
        half_parameters_half_arithmetic("tf-ema-half-parameters-half-arithmetic"),
        half_inputs_half_arithmetic("tf-ema-half-inputs-half-arithmetic"),
        infinite_mean_nan("tf-ema-infinite-mean-nan",
                          "ExponentialMovingAverage.apply() updates each shadow with assign_moving_average"),
        empty_batch_dgamma_nan("tf-ema-empty-batch-dgamma-nan", "tf.nn+ema"),
    )

    def __init__(self):
        self._graphs = {}

    def devices(self):
        return tf_devices()

    def framework_defaults(self):
        """ExponentialMovingAverage's ``decay`` is required (None); tf.nn.batch_normalization's
        ``variance_epsilon`` too."""
        return {"decay_parameter": signature_default(tf().compat.v1.train.ExponentialMovingAverage.__init__, "decay"),
                "epsilon": signature_default(tf().nn.batch_normalization, "variance_epsilon")}

    def run(self, case, device):
        key = _graph_key(case, device)
        if key not in self._graphs:
            self._graphs[key] = _EmaGraph(case, device)
        graph = self._graphs[key]
        graph.reset(case)
        return [graph.step(case, step) for step in case.steps]


def _graph_key(case, device) -> tuple:
    """What the graph bakes in; x, decay, epsilon, gamma, beta and the initial state are fed."""
    config, running = case.config, case.config.running_stats
    return (device, case.rank, config.channel_axis, case.channels, config.input_dtype, config.param_dtype,
            config.scale, config.center, running.zero_debias, running.num_updates_schedule)


class _EmaGraph:
    """One TF1 graph and session; x, decay, epsilon, gamma and beta are fed per call."""

    def __init__(self, case, device):
        self.graph, self.device = tf().Graph(), device
        self.dy, self._gradients, self._gradient_runs = None, {}, {}  # gradient ops: added on first use
        with self.graph.as_default(), tf_device_scope(device):
            self._inputs(case)
            self._model(case)
            self._reset_ops(case)
        self.session = tiny_graph_session(self.graph)
        self._callables()
        self._warm_up(case)

    def _inputs(self, case):
        v1, param = tf().compat.v1, to_tf_dtype(case.config.param_dtype)
        # The channel size must be static: the shadow (and debias) variables take the moments' shape.
        shape = [None] * case.rank
        shape[case.config.channel_axis] = case.channels
        self.x = v1.placeholder(to_tf_dtype(case.config.input_dtype), shape, name="x")
        self.decay = v1.placeholder(tf().float32, [], name="decay")
        self.epsilon = v1.placeholder(param, [], name="epsilon")
        self.gamma = v1.placeholder(param, [case.channels], name="gamma")
        self.beta = v1.placeholder(param, [case.channels], name="beta")
        self.num_updates = v1.Variable(0, dtype=tf().int64, trainable=False, name="num_updates")

    def _model(self, case):
        running = case.config.running_stats
        self.mean, self.var = tf().nn.moments(self.x, axes=list(reduction_axes(case.rank, case.config.channel_axis)))
        ema = tf().compat.v1.train.ExponentialMovingAverage(
            self.decay, zero_debias=running.zero_debias,
            num_updates=self.num_updates if running.num_updates_schedule else None)
        update = ema.apply([self.mean, self.var])
        self.avg_mean, self.avg_var = ema.average(self.mean), ema.average(self.var)
        with tf().control_dependencies([update]):
            self.updated = (self.num_updates.assign_add(1), tf().identity(self.avg_mean),
                            tf().identity(self.avg_var))
        shape = channel_shape(case.rank, case.config.channel_axis, case.channels)
        self.y_batch = self._normalize(case, self.mean, self.var, shape)
        self.y_running = self._normalize(case, self.avg_mean, self.avg_var, shape)

    def _normalize(self, case, mean, var, shape):
        """batch_normalization needs one param dtype: half moments are cast to the params' float32."""
        param, reshape = self.gamma.dtype, tf().reshape
        mean, var = tf().cast(mean, param), tf().cast(var, param)
        return tf().nn.batch_normalization(
            self.x, reshape(mean, shape), reshape(var, shape),
            offset=reshape(self.beta, shape) if case.config.center else None,
            scale=reshape(self.gamma, shape) if case.config.scale else None, variance_epsilon=self.epsilon)

    def _reset_ops(self, case):
        """Re-initialize every variable, then set the shadows and the step counter from the state."""
        v1, param = tf().compat.v1, to_tf_dtype(case.config.param_dtype)
        self.initial_mean = v1.placeholder(param, [case.channels])
        self.initial_var = v1.placeholder(param, [case.channels])
        self.initial_count = v1.placeholder(tf().int64, [])
        shadow = self.avg_mean.dtype.base_dtype  # the moments' dtype: half for half inputs
        with tf().control_dependencies([v1.global_variables_initializer()]):
            self.reset_op = tf().group(self.avg_mean.assign(tf().cast(self.initial_mean, shadow)),
                                       self.avg_var.assign(tf().cast(self.initial_var, shadow)),
                                       self.num_updates.assign(self.initial_count))

    def _callables(self):
        """Session callables made once per graph: the first run of a fetch set costs milliseconds."""
        inputs = [self.x, self.decay, self.epsilon, self.gamma, self.beta]
        make = functools.partial(caller_thread_callable, self.session)
        self._reset = make(self.reset_op, [self.initial_mean, self.initial_var, self.initial_count])
        self._eval = make(self.y_running, inputs)
        self._train = make((self.y_batch, self.mean, self.var), inputs)
        self._update = make((self.y_batch, self.mean, self.var) + self.updated, inputs)

    def _warm_up(self, case):
        """Run every callable once on a dummy batch: executors are created on first run, not by
        make_callable. reset() runs before each case, so the dummy update leaves no trace."""
        shape = [1] * case.rank
        shape[case.config.channel_axis] = case.channels
        ones = np.ones(case.channels)
        self._reset(*_as_fed([self.initial_mean, self.initial_var, self.initial_count], [ones, ones, 0]))
        args = _as_fed([self.x, self.decay, self.epsilon, self.gamma, self.beta],
                       [np.ones(shape), 0.5, 1.0, ones, ones])
        for run in (self._eval, self._train, self._update):
            run(*args)

    def _gradient_callable(self, case, training: bool, update: bool):
        """A callable returning {output name: value}: the step's forward outputs plus dx, dgamma,
        dbeta (those the case defines). The gradient ops of y_batch / y_running and the callable of
        each step kind are added to the graph the first time a step of that kind asks for them
        (building them costs tens of milliseconds); the update fetches the step counter only to
        run its increment."""
        if (training, update) not in self._gradient_runs:
            y = self.y_batch if training else self.y_running
            if training not in self._gradients:
                with self.graph.as_default(), tf_device_scope(self.device):
                    if self.dy is None:
                        self.dy = tf().compat.v1.placeholder(self.x.dtype, self.x.shape, name="dy")
                    sources = (self.gamma if case.config.scale else None, self.beta if case.config.center else None)
                    self._gradients[training] = graph_gradients(y, self.dy, self.x, *sources)
            fetches = {"y": y, **self._gradients[training]}
            if training:
                fetches.update(batch_mean=self.mean, batch_var=self.var)
            if update:
                count, running_mean, running_var = self.updated
                fetches.update(_count=count, running_mean=running_mean, running_var=running_var)
            inputs = [self.x, self.decay, self.epsilon, self.gamma, self.beta, self.dy]
            self._gradient_runs[training, update] = caller_thread_callable(self.session, fetches, inputs)
        return self._gradient_runs[training, update]

    def reset(self, case):
        state = case.initial_state
        self._reset(*_as_fed([self.initial_mean, self.initial_var, self.initial_count],
                             [state.running_mean, state.running_var, state.num_updates]))

    def step(self, case, step):
        config, state = case.config, case.initial_state
        args = _as_fed([self.x, self.decay, self.epsilon, self.gamma, self.beta],
                       [step.x, config.running_stats.decay, config.effective_epsilon, state.gamma, state.beta])
        if step.dy is not None:
            return self._gradient_step(case, step, args)
        if not step.is_training:
            return {"y": to_numpy(self._eval(*args))}
        if not step.update_running_stats:
            y, mean, var = self._train(*args)
            return {"y": to_numpy(y), "batch_mean": to_numpy(mean), "batch_var": to_numpy(var)}
        # The step counter is ours (a global step fed to num_updates), so it is not reported.
        y, mean, var, _count, running_mean, running_var = self._update(*args)
        return {"y": to_numpy(y), "batch_mean": to_numpy(mean), "batch_var": to_numpy(var),
                "running_mean": to_numpy(running_mean), "running_var": to_numpy(running_var)}

    def _gradient_step(self, case, step, args) -> dict:
        """The step's forward outputs and its gradients, from one session run."""
        run = self._gradient_callable(case, step.is_training, step.update_running_stats)
        fetched = run(*args, *_as_fed([self.dy], [step.dy]))
        return {**dict.fromkeys(GRADIENT_NAMES), **{k: to_numpy(v) for k, v in fetched.items() if k != "_count"}}


def _as_fed(placeholders, values) -> list:
    """Values as NumPy arrays of each placeholder's dtype (callables do not convert); a bfloat16
    value for TensorFlow < 2.13's own bfloat16 type goes through float32 (graph.as_feed)."""
    return [as_feed(v, np.dtype(p.dtype.as_numpy_dtype)) for p, v in zip(placeholders, values)]
