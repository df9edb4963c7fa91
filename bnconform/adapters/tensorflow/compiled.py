"""tf_keras BatchNormalization inside ``tf.function``: compiled by XLA (``jit_compile=True``), or
as a TensorFlow graph without XLA.

Rows (``execution_mode = "compiled"``, ``eager_row = "tf_keras.auto"``):

* ``tf_keras.auto+xla``: the very layer of ``tf_keras.auto`` (``fused=None``, same knobs, same
  cached build) called inside ``tf.function(jit_compile=True, reduce_retracing=True)`` -- what
  ``model.compile(jit_compile=True)`` wraps a train step in (tf_keras ``Model.make_train_function``).
  The layer's moving-average assigns run inside the compiled program; on a step with ``dy`` the
  ``tf.GradientTape`` and its ``gradient`` call run inside the same program, so XLA compiles the
  forward, the update and the backward together (the tape's gradient w.r.t. x and the gamma / beta
  variables, cotangent dy).
* ``tf_keras.auto+tf.function``: the same program with ``jit_compile=False`` (TensorFlow's graph
  executor and its grappler passes, no XLA).

Caching: one ``tf.function`` per (layer, training, with gradients, momentum, epsilon): call()
reads momentum and epsilon as Python floats, so a trace bakes them in. ``reduce_retracing=True``
(as Keras' trainers pass) makes the second input shape retrace once with unknown dimensions, and
that generic trace serves every later shape; XLA still compiles one executable per concrete shape.

What changes against the eager row (tf_keras/src/layers/normalization/batch_normalization.py,
``_fused_batch_norm``): the fused kernel folds the moving averages itself (``exponential_avg_factor
= 1 - momentum``) only outside an XLA context; ``tf.function(jit_compile=True)`` traces inside an
``XLAControlFlowContext`` (polymorphic_function.py), so under XLA the fused path runs the kernel with
factor 1 and updates with ``_assign_moving_average``'s subtractive form, like the non-fused path (the
plain ``tf.function`` row keeps the eager form). Everything the eager row declares is re-verified
here; the differences are declared below with their cause.

Importing this module does not import TensorFlow.
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

from ...judging.selectors import case_in, empty_batch_gamma_gradient, updates_infinite_running_mean
from ..base import Deviation, Mismatches, Raises
from .common import infinite_mean_nan, layer_call, reached, tf, to_numpy, to_tensor
from .keras import TfKerasAutoAdapter
from .keras_common import BN_SOURCE, LAYER, fused_path, renorm_float64_deviation

# XLA's expansion of BatchNormGrad, what tf2xla lowers a training FusedBatchNormGradV3 to
# (HandleBatchNormGrad: grad_scale = sum(dy * (x - mean)) * rsqrt(var + eps)).
XLA_BATCHNORM_EXPANDER = ("https://github.com/openxla/xla/blob/16569562fc04a1d1eadcd6a79f2269c1ccf4c421/"
                          "xla/service/batchnorm_expander.cc")

# Inside a tf.function the float64 renorm layer's mixed-dtype tf.maximum fails when the graph is
# built (op type inference), not when it runs: the same defect as eager, raised as a TypeError.
RENORM_FLOAT64_AT_TRACE = replace(
    renorm_float64_deviation(f"{LAYER}(fused=None) in a tf.function"),
    behaviour=Raises("TypeError", "'Maximum' Op has type float32 that does not match type float64"),
    explanation=(f"{LAYER}(fused=None) _renorm_correction_and_moments computes tf.maximum(renorm_stddev, "
                 "tf.sqrt(epsilon)); tf.sqrt of the Python float is a float32 tensor, so tracing a float64 layer "
                 "into a tf.function fails at graph construction (eager raises InvalidArgumentError when it runs)"))

XLA_FUSED_EMPTY_BATCH_DGAMMA_NAN = Deviation(
    name="xla-fused-empty-batch-dgamma-nan",
    kind="edge",
    applies=empty_batch_gamma_gradient & fused_path,
    behaviour=Mismatches(("dgamma",), "dgamma is NaN on an empty batch (the model's is 0, an empty sum)"),
    explanation=("on the fused path XLA lowers FusedBatchNormGradV3 (training) to BatchNormGrad, which its "
                 "BatchNormExpander writes as sum(dy * (x - mean)) * rsqrt(var + epsilon); for N == 0 the batch "
                 "variance is 0/0 = NaN, so dgamma = 0 * NaN = NaN (eager TensorFlow's CPU kernel returns 0)"),
    link=XLA_BATCHNORM_EXPANDER,
)

# Data-dependent (a mean 1e4 times the spread on the fused path: rank 4 / 5), so named cases.
XLA_FUSED_ONE_PASS_VARIANCE = Deviation(
    name="xla-fused-one-pass-variance",
    kind="precision",
    applies=case_in("degenerate/cancellation_float32_1e4_nhwc") & fused_path,
    behaviour=Mismatches(("y", "running_var"), "the batch variance cancels to garbage or a negative value, so y is "
                                               "NaN and the moving variance follows"),
    explanation=("XLA's BatchNormExpander writes a training BatchNormTraining as var = E[x^2] - E[x]^2 in float32 "
                 "(one pass); for float32 inputs 1e4 + N(0, 1) both terms are ~1e8 (ulp 8), so the variance "
                 "cancels: y NaN on 95 of 96 elements. Eager TensorFlow's fused CPU kernel and the non-fused "
                 "path (rank 2) are two-pass and exact enough (tensorflow#118701; a fix was declined in #25115)"),
    link="https://github.com/tensorflow/tensorflow/issues/118701",
)

# Under XLA the fused path also updates with _assign_moving_average (use_fused_avg_updates needs
# get_enclosing_xla_context() is None), so an infinite moving mean turns NaN on both paths; the eager
# row's declaration excludes the fused path. No case of the suite reaches the fused part (checked by
# hand: rank-4 NHWC, an Inf batch then a clean one: eager Inf, XLA NaN).
XLA_INFINITE_MEAN_NAN = infinite_mean_nan(
    "moving-average-turns-infinite-mean-nan",
    (f"{LAYER}(fused=None) in tf.function(jit_compile=True), on both paths (in an XLA context the fused kernel "
     "runs with exponential_avg_factor = 1, then the layer calls) _assign_moving_average"),
    link=f"{BN_SOURCE}#L932", applies=updates_infinite_running_mean,
    found="found by bnconform fuzz; on the fused path under XLA by hand")


def _graph_deviations(dropped: tuple[str, ...] = (), added: tuple[Deviation, ...] = ()) -> tuple[Deviation, ...]:
    """tf_keras.auto's deviations with the renorm float64 raise as a tf.function raises it, less
    ``dropped`` (names that the compiled path does not show), plus ``added``."""
    gone = {"renorm-float64-raises", *dropped}
    return tuple(d for d in TfKerasAutoAdapter.deviations if d.name not in gone) + (RENORM_FLOAT64_AT_TRACE, *added)


class _TfKerasAutoCompiled(TfKerasAutoAdapter):
    """The tf_keras.auto layer called inside a cached ``tf.function``; ``jit_compile`` picks XLA."""

    execution_mode = "compiled"
    eager_row = "tf_keras.auto"
    jit_compile: ClassVar[bool] = True

    def __init__(self):
        super().__init__()
        self._programs = {}  # (id(layer), training, gradients, momentum, epsilon) -> tf.function

    def _step(self, layer, case, step) -> dict:
        x = to_tensor(step.x, case.config.input_dtype)
        program = self.program(layer, step.is_training, step.dy is not None)
        if step.dy is None:  # forward only: no tape in the program
            y, grads = program(x), {}
        else:  # y has the input dtype (the layer's compute dtype), so dy does too
            y, grads = _named_gradients(layer, *program(x, to_tensor(step.dy, case.config.input_dtype)))
        return {"y": to_numpy(y), **_state_outputs(layer), **grads}

    def program(self, layer, training: bool, gradients: bool):
        """The cached ``tf.function`` of one step of ``layer`` (public for tests: its
        ``experimental_get_compiler_ir`` and tracing count show what XLA compiled)."""
        key = (id(layer), training, gradients, layer.momentum, layer.epsilon)
        if key not in self._programs:
            body = _forward_and_vjp(layer, training) if gradients else layer_call(layer, training)
            self._programs[key] = tf().function(body, jit_compile=self.jit_compile, reduce_retracing=True)
        return self._programs[key]


def _gradient_sources(layer) -> list:
    """gamma and beta where the layer has them (scale / center on)."""
    return [v for v in (layer.gamma, layer.beta) if v is not None]


def _forward_and_vjp(layer, training: bool):
    """(x, dy) -> (y, [dx, dgamma?, dbeta?]): the layer call and its tape VJP in one program."""
    def body(x, dy):
        sources = [x, *_gradient_sources(layer)]
        with tf().GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(sources)
            y = layer(x, training=training)
        return y, tape.gradient(y, sources, output_gradients=dy)
    return body


def _named_gradients(layer, y, grads) -> tuple:
    """(y, {"dx", "dgamma", "dbeta"}) as NumPy; a gradient the tape did not reach is an error."""
    names = ["dx"] + [n for n, v in (("dgamma", layer.gamma), ("dbeta", layer.beta)) if v is not None]
    # gamma / beta may be (1, .., C, ..) with ghost batches: flattened to (C,)
    return y, {n: to_numpy(g) if n == "dx" else to_numpy(g).reshape(-1) for n, g in reached(names, grads)}


def _state_outputs(layer) -> dict:
    """The moving statistics (and renorm state) the program assigned, read back as flat arrays."""
    flat = lambda variable: to_numpy(variable).reshape(-1)  # noqa: E731  (ghost batching adds unit axes)
    out = {"running_mean": flat(layer.moving_mean), "running_var": flat(layer.moving_variance)}
    if layer.renorm:
        out.update(renorm_mean=flat(layer.renorm_mean), renorm_stddev=flat(layer.renorm_stddev),
                   running_stddev=flat(layer.moving_stddev))
    return out


class TfKerasAutoXlaAdapter(_TfKerasAutoCompiled):
    """``tf_keras.layers.BatchNormalization(fused=None)`` inside ``tf.function(jit_compile=True)``."""

    name = "tf_keras.auto+xla"
    jit_compile = True
    notes = ("tf_keras.auto's layer (fused=None) inside tf.function(jit_compile=True, reduce_retracing=True): "
             "XLA compiles the call, the moving-average assigns and the tape's backward")
    speed_note = ("~175 ms CPU median per case: XLA compiles one executable per program (layer, mode, momentum, "
                  "epsilon) and input shape (~150 ms), and the suite runs most shapes once; ~1 ms per step once compiled")
    # XLA lowers FusedBatchNormGradV3 itself (tf2xla: BatchNormGrad, no 4-D folding), so TensorFlow's
    # empty rank-5 fused-gradient defects do not occur; its expansion gives NaN dgamma instead. The
    # infinite-mean declaration widens to the fused path, whose update form changes under XLA.
    deviations = _graph_deviations(("fused-kernel-empty-rank5-dx-folded", "fused-kernel-empty-rank5-eval-transpose",
                                    "moving-average-turns-infinite-mean-nan"),
                                   (XLA_FUSED_EMPTY_BATCH_DGAMMA_NAN, XLA_INFINITE_MEAN_NAN,
                                    XLA_FUSED_ONE_PASS_VARIANCE))


class TfKerasAutoGraphAdapter(_TfKerasAutoCompiled):
    """``tf_keras.layers.BatchNormalization(fused=None)`` inside ``tf.function`` (graph, no XLA)."""

    name = "tf_keras.auto+tf.function"
    jit_compile = False
    notes = ("tf_keras.auto's layer (fused=None) inside tf.function(reduce_retracing=True), no XLA: "
             "TensorFlow's graph executor runs the call, the assigns and the tape's backward")
    speed_note = ("~20 ms CPU median per case: a trace per program (layer, mode, momentum, epsilon) and a generic "
                  "retrace for a second shape (~15-60 ms each), then ~1 ms per step of graph execution")
    deviations = _graph_deviations()
