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
sample_weights              ``tf.nn.weighted_moments(x, axes, frequency_weights=w, keepdims=True)``
                            instead of ``tf.nn.moments``, w reshaped ``[B] -> [B, 1, .., 1]`` (what
                            tf-slim's ``batch_weights`` path does), broadcast over x by the op
input / param dtype         x in the input dtype; params in the param dtype; the moments are
                            cast (``tf.cast``) to the param dtype for half inputs so that
                            batch_normalization sees one param dtype
==========================  =====================================================================

Capabilities: no step that updates running statistics (this API keeps none: see ``tf.nn+ema``),
so the running-statistics conventions never matter; epsilon inside the square root only
(``rsqrt(variance + variance_epsilon)``); of the model extensions, sample weights only.

Sample weights: ``tf.nn.weighted_moments`` (WEIGHTED_MOMENTS_LINE) is the canonical weighted
moments of docs/semantics.md: mean = sum(w x) / W and the biased, two-pass variance
sum(w (x - mean)^2) / W, with W = sum(w + zeros_like(x)) over the reduced axes, so every spatial
position counts with its sample's weight. It upcasts float16 x to float32 (not bfloat16) and
divides with ``div_no_nan`` (0 for W = 0, a case validation rejects). The weights are constants to
the tape: dx carries the weighted terms, and nothing is returned for w.

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
from .moments_findings import (bfloat16_mean_accumulated_in_bfloat16, bfloat16_moments_shift_y,
                               half_inputs_half_arithmetic, half_parameters_half_arithmetic, moments_overflow)

# tf.nn.weighted_moments (v1 body; the v2 export calls it): two-pass, div_no_nan (installed 2.21.0 file).
WEIGHTED_MOMENTS_LINE = ("https://github.com/tensorflow/tensorflow/blob/v2.21.0/"
                         "tensorflow/python/ops/nn_impl.py#L1329-L1401")


class TfNnAdapter(Adapter):
    """Runs each step through ``tf.nn.moments`` and ``tf.nn.batch_normalization`` in eager mode."""
    environment = TF_ENVIRONMENT

    name = "tf.nn"
    keeps_state = False  # a function per call: the caller keeps the running statistics
    framework = "tensorflow"
    extra = "tensorflow"
    requires = ("tensorflow",)
    device_kinds = ("cpu", "cuda")
    notes = ("stateless, judged step by step: training steps use tf.nn.moments, eval steps the running stats the "
             "case expects before them; half-input moments cast to float32 params")

    capabilities = Capabilities(epsilon_modes=EPS_INSIDE, step_kinds=frozenset({("batch", False), ("running", False)}),
                                gradients=frozenset({"batch", "running"}),
                                extensions=frozenset({"sample_weights"}))  # tf.nn.weighted_moments
    # Judged step by step (keeps_state = False), training steps that update included: the findings
    # of tf.nn.moments + batch_normalization that tf.nn+ema declares show here too.
    deviations = (half_parameter_gradients("tf.nn"), empty_batch_dgamma_nan("tf.nn: dgamma of an empty batch is NaN", "tf.nn"),
                  moments_overflow("tf-nn-variance-overflow", ("y", "batch_var", "dx", "dgamma")),
                  bfloat16_moments_shift_y("tf-nn-bfloat16-moments-shift-y"),
                  bfloat16_mean_accumulated_in_bfloat16("tf-nn-bfloat16-mean-accumulated-in-bfloat16",
                                                        ("y", "batch_mean", "batch_var")),
                  half_parameters_half_arithmetic("tf-nn-half-parameters-half-arithmetic"),
                  half_inputs_half_arithmetic("tf-nn-half-inputs-half-arithmetic"))

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
        mean, var = params.moments(x, step.sample_weights)
        y = params.normalize(x, params.as_param(mean), params.as_param(var))
        return {"y": y, "batch_mean": tf().reshape(mean, [-1]), "batch_var": tf().reshape(var, [-1])}


class _Params:
    """gamma, beta and running statistics of a case as broadcastable tensors in the param dtype."""

    def __init__(self, case):
        config, state = case.config, case.initial_state
        self.axes = reduction_axes(case.rank, config.channel_axis)
        self.shape = channel_shape(case.rank, config.channel_axis, case.channels)
        self.dtype, self.input_dtype = config.param_dtype, config.input_dtype
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

    def moments(self, x, sample_weights=None):
        """Batch mean and biased variance, keepdims: ``tf.nn.moments``, or with per-sample
        weights ``tf.nn.weighted_moments`` on the weights reshaped to ``[B, 1, .., 1]``."""
        if sample_weights is None:
            return tf().nn.moments(x, axes=list(self.axes), keepdims=True)
        weights = tf().reshape(to_tensor(sample_weights, self.input_dtype), [-1] + [1] * (len(x.shape) - 1))
        return tf().nn.weighted_moments(x, axes=list(self.axes), frequency_weights=weights, keepdims=True)

    def as_param(self, moment):
        """tf.nn.moments returns the input dtype; batch_normalization needs params of one dtype."""
        return tf().cast(moment, self.running_mean.dtype)

    def normalize(self, x, mean, var):
        return tf().nn.batch_normalization(x, mean, var, offset=self.offset, scale=self.scale,
                                           variance_epsilon=self.epsilon)
