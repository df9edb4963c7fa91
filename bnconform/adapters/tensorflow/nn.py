"""tf.nn.moments + tf.nn.batch_normalization: TensorFlow's stateless BN primitives (eager).

Translation table (canonical knob -> framework argument):

==========================  =====================================================================
channel_axis                ``tf.nn.moments(x, axes=<every other axis>, keepdims=True)``; gamma,
                            beta and running stats reshaped to ``[1,..,C,..,1]`` (the documented
                            "same number of dimensions as x" form), so any rank and axis work
epsilon (+ epsilon_floor)   ``variance_epsilon=config.effective_epsilon`` (added inside rsqrt)
scale / center              ``scale=gamma`` / ``offset=beta``, or ``None`` when switched off
normalize_with="batch"      normalize with the ``tf.nn.moments`` outputs
normalize_with="running"    normalize with the case's running statistics as given
input / param dtype         x in the input dtype; params in the param dtype; the moments are
                            cast (``tf.cast``) to the param dtype for half inputs so that
                            batch_normalization sees one param dtype
==========================  =====================================================================

Capabilities: no step that updates running statistics (this API keeps none: see ``tf.nn+ema``),
so the running-statistics conventions never matter; epsilon inside the square root only
(``rsqrt(variance + variance_epsilon)``); no model extensions.

Gradients: a step with an upstream ``dy`` runs the same call under a ``tf.GradientTape`` that
watches x and the 1-D gamma / beta (reshaped inside the tape) and returns
``tape.gradient(y, [x, gamma, beta], output_gradients=dy)``. In a training step the tape runs
through ``tf.nn.moments``, so dx carries the terms through the batch mean and variance; in an
eval step the running statistics are constants. Forward-only steps run no tape.
"""

from __future__ import annotations

import copy

from ...judging.capabilities import Capabilities
from ...reference.moments import reduction_axes
from ..base import Adapter
from .common import (EPS_INSIDE, TF_ENVIRONMENT, channel_shape, empty_batch_dgamma_nan, half_parameter_gradients,
                     signature_default, tape_gradients, tf, tf_device_scope, tf_devices, to_numpy, to_tensor)


class TfNnAdapter(Adapter):
    """Runs each step through ``tf.nn.moments`` and ``tf.nn.batch_normalization`` in eager mode."""
    environment = TF_ENVIRONMENT

    name = "tf.nn"
    framework = "tensorflow"
    extra = "tensorflow"
    requires = ("tensorflow",)
    device_kinds = ("cpu", "cuda")
    notes = ("stateless: training steps use tf.nn.moments, eval steps the case's initial running stats; "
             "half-input moments cast to float32 params")

    capabilities = Capabilities(epsilon_modes=EPS_INSIDE, step_kinds=frozenset({("batch", False), ("running", False)}),
                                gradients=frozenset({"batch", "running"}))
    deviations = (half_parameter_gradients("tf.nn"), empty_batch_dgamma_nan("tf.nn: dgamma of an empty batch is NaN", "tf.nn"))

    def devices(self):
        return tf_devices()

    def framework_defaults(self):
        """No EMA knob; ``variance_epsilon`` is a required argument (no default)."""
        return {"decay_parameter": None, "epsilon": signature_default(tf().nn.batch_normalization, "variance_epsilon")}

    def run(self, case, device):
        with tf_device_scope(device):
            params = _Params(case)
            return [self._step(case, params, step) for step in case.steps]

    def _step(self, case, params, step):
        x = to_tensor(step.x, case.config.input_dtype)
        if step.dy is None:
            return {k: to_numpy(v) for k, v in self._forward(params, step, x).items()}
        with tf().GradientTape() as tape:
            tape.watch([v for v in (x, params.gamma, params.beta) if v is not None])
            outputs = self._forward(params.reshaped_in_tape(), step, x)
        grads = tape_gradients(tape, outputs["y"], to_tensor(step.dy, case.config.input_dtype), x,
                               params.gamma, params.beta)
        return {**{k: to_numpy(v) for k, v in outputs.items()}, **grads}

    @staticmethod
    def _forward(params, step, x) -> dict:
        """y (and the batch moments of a training step) as tensors."""
        if not step.is_training:
            return {"y": params.normalize(x, params.running_mean, params.running_var)}
        mean, var = tf().nn.moments(x, axes=list(params.axes), keepdims=True)
        y = params.normalize(x, params.as_param(mean), params.as_param(var))
        return {"y": y, "batch_mean": tf().reshape(mean, [-1]), "batch_var": tf().reshape(var, [-1])}


class _Params:
    """gamma, beta and running statistics of a case as broadcastable tensors in the param dtype."""

    def __init__(self, case):
        config, state = case.config, case.initial_state
        self.axes = reduction_axes(case.rank, config.channel_axis)
        self.shape = channel_shape(case.rank, config.channel_axis, case.channels)
        self.dtype = config.param_dtype
        self.epsilon = config.effective_epsilon
        # 1-D gamma / beta: what a gradient is taken with respect to (None when switched off).
        self.gamma = to_tensor(state.gamma, self.dtype) if config.scale else None
        self.beta = to_tensor(state.beta, self.dtype) if config.center else None
        self.scale, self.offset = self._reshaped(self.gamma), self._reshaped(self.beta)
        self.running_mean = self._vector(state.running_mean)
        self.running_var = self._vector(state.running_var)

    def _vector(self, values):
        return tf().reshape(to_tensor(values, self.dtype), self.shape)

    def _reshaped(self, vector):
        return None if vector is None else tf().reshape(vector, self.shape)

    def reshaped_in_tape(self) -> "_Params":
        """These params with scale / offset reshaped again (call inside a tape): the tape then
        links the broadcast shapes to the watched 1-D gamma and beta."""
        clone = copy.copy(self)
        clone.scale, clone.offset = self._reshaped(self.gamma), self._reshaped(self.beta)
        return clone

    def as_param(self, moment):
        """tf.nn.moments returns the input dtype; batch_normalization needs params of one dtype."""
        return tf().cast(moment, self.running_mean.dtype)

    def normalize(self, x, mean, var):
        return tf().nn.batch_normalization(x, mean, var, offset=self.offset, scale=self.scale,
                                           variance_epsilon=self.epsilon)
