"""tf.compat.v1.layers.batch_normalization in TF1 graph mode (tf.compat.v1.Graph + Session).

On TensorFlow >= 2.16 the v1 layers live in tf_keras, which TensorFlow only uses when
``TF_USE_LEGACY_KERAS=1`` is set before it is imported (``environment`` below).

Translation table (canonical knob -> argument):

* channel_axis         -> ``axis`` (any axis; the layer picks its fused 4-D/5-D kernel for
                          axis 1 or the last axis with a half/float32 compute dtype, ``fused=None``)
* epsilon (+ floor)    -> ``epsilon = config.effective_epsilon`` (added inside the rsqrt)
* scale / center       -> ``scale`` / ``center``
* decay                -> ``momentum`` (weight on the old statistic, same convention)
* normalize_with       -> ``training=True`` (batch statistics) or ``training=False`` (moving)
* update_running_stats -> run the ops the layer put in ``tf.GraphKeys.UPDATE_OPS`` (or not):
                          in TF1 ``training`` and the update are separate, so "batch statistics
                          without update" is expressible
* input/param dtype    -> the placeholder dtype; parameters follow the input (float32 for halves)

The layer exposes no batch moments and no update counter: outputs are y, running_mean and
running_var.

Capabilities: epsilon inside the sqrt; a plain EMA (no cumulative rule, zero-debias or
num_updates schedule); no inference step that updates; variables in the input dtype (float32
for half inputs); no model extensions (renorm and virtual batches exist in the layer but are
not translated here). Running variance, a convention that depends on the path: the fused path
folds in the Bessel-corrected variance FusedBatchNormV3 returns (``when`` override), the
non-fused path the biased one from ``tf.nn.moments``.

Gradients: ``tf.gradients(y, [x, gamma, beta], grad_ys=dy)`` in the layer's graph (see
:mod:`.graph`), with gamma / beta the layer's variables: on the fused path TensorFlow's gradient
of FusedBatchNormV3 (the FusedBatchNormGradV3 kernel, training or inference form), on the
non-fused path the autodiff of ``tf.nn.moments`` + ``tf.nn.batch_normalization``.
"""

from __future__ import annotations

from ...judging.capabilities import Capabilities
from ...judging.selectors import (empty_batch_gamma_gradient, updates_infinite_running_mean, updates_on_empty_batch,
                                  where)
from ..base import Deviation, MatchesVariant, Mismatches
from ..findings import empty_batch_nan_running_stats, float32_variance_overflow
from . import graph as g
from .common import (LAYER_DTYPES, LAYER_STEP_KINDS, PLAIN_EMA, empty_batch_dgamma_nan, empty_rank5_fused_gradient,
                     float64_decay_rounds, rounded_decay_variant, signature_default)

_API = "tf.compat.v1.layers.batch_normalization"
# tf-keras source of the layer (fused path, _assign_moving_average, zero-size TODO).
_SOURCE = ("https://github.com/keras-team/tf-keras/blob/cdf256d4ac7e25bb64e736af6d12d4d73ea77978/"
           "tf_keras/layers/normalization/batch_normalization.py")
_MOMENTS_DOCS = "https://tensorflow.org/api_docs/python/tf/nn/moments"


def takes_fused_path(case) -> bool:
    """The v1 layer's own rule (fused=None): rank 4/5, axis 1 or last, half/float32 compute."""
    rank, axis = case.rank, case.config.channel_axis
    return rank in (4, 5) and axis in (1, rank - 1) and case.config.input_dtype != "float64"


fused_path = where("the fused kernel (fused=None: 4-D/5-D half/float32 input, channel axis 1 or last)")(takes_fused_path)

V1_CAPABILITIES = Capabilities(**PLAIN_EMA, running_variance=frozenset({"biased"}), step_kinds=LAYER_STEP_KINDS,
                               dtypes=LAYER_DTYPES, gradients=frozenset({"batch", "running"}),
                               when=((fused_path, {"running_variance": {"bessel"}}),))

EMPTY_BATCH_NAN = empty_batch_nan_running_stats(
    "tf.v1.layers: an empty batch makes the moving statistics NaN",
    "tf.nn.moments of an empty batch is 0/0 = NaN and the update folds it in; the layer "
    "only guards zero-size batches under a distribution strategy (TODO b/129279393)",
    _SOURCE)

FLOAT32_VARIANCE_OVERFLOW = float32_variance_overflow(
    "tf.v1.layers: float32 batch variance overflows to inf",
    "moments are computed in float32 (the float32 compute dtype), where a variance above "
    "3.4e38 is not representable; the float64 oracle keeps it finite",
    _MOMENTS_DOCS)

FLOAT64_DECAY_ROUNDED = Deviation(
    name="tf.v1.layers float64: 1 - momentum rounded to float32",
    kind="dtype",
    applies=float64_decay_rounds & ~updates_on_empty_batch,
    behaviour=MatchesVariant("decay' = 1 - float32(1 - decay) (0.9 -> 1 - 0.1000000015)", rounded_decay_variant),
    explanation="_assign_moving_average builds tf.convert_to_tensor(1.0 - momentum), a float32 constant, "
                "then casts it to float64: float64 moving statistics drift ~1.5e-8 relative per update",
    link=_SOURCE,
)

INFINITE_MEAN_NAN = Deviation(
    name="tf.v1.layers: an infinite moving mean becomes NaN on the next update",
    kind="edge",
    applies=updates_infinite_running_mean,
    behaviour=Mismatches(("running_mean",), "an infinite moving_mean becomes NaN (the model's stays infinite)"),
    explanation="both paths update through _assign_moving_average in graph mode (the fused kernel's own "
                "average is used only eagerly): moving -= (moving - batch) * (1 - momentum) is Inf - Inf = NaN "
                "for moving = +-Inf, where the model's momentum * moving + (1 - momentum) * batch keeps +-Inf "
                "(found by bnconform fuzz)",
    link=f"{_SOURCE}#L870",
)

# The fused path's FusedBatchNormGradV3 returns dgamma = 0 for N == 0 (measured on a [0, 3, 2, 2] batch).
EMPTY_BATCH_DGAMMA_NAN = empty_batch_dgamma_nan("tf.v1.layers: dgamma of an empty batch is NaN",
                                                f"{_API} (non-fused path)", empty_batch_gamma_gradient & ~fused_path)

DEVIATIONS = (EMPTY_BATCH_NAN, FLOAT32_VARIANCE_OVERFLOW, FLOAT64_DECAY_ROUNDED, INFINITE_MEAN_NAN,
              EMPTY_BATCH_DGAMMA_NAN, *empty_rank5_fused_gradient("tf.v1.layers", f"{_API} (fused path)", fused_path))


def _graph_key(case, device):
    """Every knob the graph bakes in; the decay only where it cannot be fed exactly."""
    c = case.config
    return (device, case.rank, c.channel_axis, case.channels, c.input_dtype, c.effective_epsilon,
            c.scale, c.center, _decay_feed(case).key())


def _decay_feed(case) -> g.DecayFeed:
    # The layer's fused path is the Keras fused path (momentum made a float32 tensor first).
    return g.decay_feed(case, keras_fused=takes_fused_path(case))


def _build_graph(case, device, feed: g.DecayFeed | None = None):
    """The case's layer in a fresh graph; ``feed`` overrides how the decay is passed (tests)."""
    from .common import tf

    c = case.config
    v1 = tf().compat.v1
    # epsilon stays a Python float: the fused path passes it to FusedBatchNormV3 as an attribute.
    knobs = dict(axis=c.channel_axis, epsilon=c.effective_epsilon, center=c.center, scale=c.scale, fused=None,
                 name="bn")

    def build(x, momentum):
        y_train = v1.layers.batch_normalization(x, training=True, momentum=momentum, **knobs)
        updates = list(v1.get_collection(v1.GraphKeys.UPDATE_OPS))
        y_eval = v1.layers.batch_normalization(x, training=False, momentum=momentum, reuse=True, **knobs)
        return g.BuiltLayer(y_train, y_eval, updates, g.variables_by_role(v1.global_variables()))

    return g.GraphLayer(build, c.input_dtype, case.rank, c.channel_axis, case.channels, device,
                        feed or _decay_feed(case))


class TfV1LayersAdapter(g.GraphLayerAdapter):
    """tf.compat.v1.layers.batch_normalization, one cached graph + session per configuration."""

    name = "tf.v1.layers"
    framework = "tensorflow"
    requires = ("tensorflow", "tf_keras")
    deviations = DEVIATIONS
    capabilities = V1_CAPABILITIES
    decay_parameter = ("momentum", "old")
    graph_key, build_graph = staticmethod(_graph_key), staticmethod(_build_graph)
    takes_fused_path = staticmethod(takes_fused_path)
    notes = "TF1 graph mode (TF_USE_LEGACY_KERAS=1, tf_keras); update ops run explicitly per step"

    def framework_defaults(self):
        """``momentum`` and ``epsilon`` from the signature of tf.compat.v1.layers.batch_normalization."""
        from .common import tf

        function = tf().compat.v1.layers.batch_normalization
        return {"decay_parameter": signature_default(function, "momentum"),
                "epsilon": signature_default(function, "epsilon")}
