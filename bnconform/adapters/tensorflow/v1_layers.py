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
running_var. Running variance: the fused path folds in the Bessel-corrected variance that
FusedBatchNormV3 returns, the non-fused path the biased one from ``tf.nn.moments`` (declared
per path below).

Unsupported: epsilon outside the sqrt or as a max; the cumulative rule; zero_debias; the
num_updates decay schedule; an inference step that updates; params in another dtype than the
layer's own.
"""

from __future__ import annotations

from . import graph as g
from ..base import Adapter, Deviation, MatchesVariant, Mismatches, variant

_API = "tf.compat.v1.layers.batch_normalization"
# tf-keras source of the layer (fused path, _assign_moving_average, zero-size TODO).
_SOURCE = ("https://github.com/keras-team/tf-keras/blob/cdf256d4ac7e25bb64e736af6d12d4d73ea77978/"
           "tf_keras/layers/normalization/batch_normalization.py")
_FUSED_ISSUE = "https://github.com/tensorflow/tensorflow/issues/55545"
_MOMENTS_DOCS = "https://tensorflow.org/api_docs/python/tf/nn/moments"


def takes_fused_path(case) -> bool:
    """The v1 layer's own rule (fused=None): rank 4/5, axis 1 or last, half/float32 compute."""
    rank, axis = case.rank, case.config.channel_axis
    return rank in (4, 5) and axis in (1, rank - 1) and case.config.input_dtype != "float64"


def _variance_kind(case) -> str:
    return case.config.running_stats.variance


def _decay_rounds(case) -> bool:
    decay = case.config.running_stats.decay
    return g.float32_rounded_decay(decay) != decay


def _float64_update_differs(case) -> bool:
    """float64: the rounded decay shows, or the biased variance does."""
    if case.config.input_dtype != "float64" or not g.updates_visibly(case, min_count=1):
        return False
    return _decay_rounds(case) or (_variance_kind(case) == "bessel" and g.updates_visibly(case))


def _float64_variant(case):
    decay = g.float32_rounded_decay(case.config.running_stats.decay)
    return variant(case, running_stats={"variance": "biased", "decay": decay})


EMPTY_BATCH_NAN = Deviation(
    name="tf.v1.layers: an empty batch makes the moving statistics NaN",
    applies_to="cases with a training step that updates from N == 0 values",
    applies=lambda c, d: g.updates_empty_batch(c),
    behaviour=Mismatches(("running_mean", "running_var"),
                         "moving_mean and moving_variance become NaN (the oracle leaves them unchanged)"),
    explanation="tf.nn.moments of an empty batch is 0/0 = NaN and the update folds it in; the layer "
                "only guards zero-size batches under a distribution strategy (TODO b/129279393)",
    link=_SOURCE,
)

FLOAT32_VARIANCE_OVERFLOW = Deviation(
    name="tf.v1.layers: float32 batch variance overflows to inf",
    applies_to="half/float32 inputs whose true batch variance exceeds the float32 maximum (~3.4e38)",
    applies=lambda c, d: g.batch_variance_overflows(c),
    behaviour=Mismatches(("y", "running_var"),
                         "the batch variance (~1e74) is inf in float32: y collapses to beta, moving_variance is inf"),
    explanation="moments are computed in float32 (the float32 compute dtype), where a variance above "
                "3.4e38 is not representable; the float64 oracle keeps it finite",
    link=_MOMENTS_DOCS,
)

FLOAT64_DECAY_ROUNDED = Deviation(
    name="tf.v1.layers float64: 1 - momentum rounded to float32, biased moving variance",
    applies_to="float64 inputs (always the non-fused path) with an update where the float32 rounding of "
               "1 - decay or the biased variance shows",
    applies=lambda c, d: _float64_update_differs(c),
    behaviour=MatchesVariant("decay' = 1 - float32(1 - decay) (0.9 -> 1 - 0.1000000015) and a biased running variance",
                             _float64_variant),
    explanation="_assign_moving_average builds tf.convert_to_tensor(1.0 - momentum), a float32 constant, "
                "then casts it to float64: float64 moving statistics drift ~1.5e-8 relative per update",
    link=_SOURCE,
)

FUSED_BESSEL = Deviation(
    name="tf.v1.layers fused path: Bessel-corrected moving variance",
    applies_to="4-D/5-D inputs with channel axis 1 or last in half/float32 (fused kernel), "
               "cases asking for a biased running variance, with an update from N >= 2",
    applies=lambda c, d: takes_fused_path(c) and _variance_kind(c) == "biased" and g.updates_visibly(c),
    behaviour=MatchesVariant("running variance is Bessel-corrected (N/(N-1))",
                             lambda c: variant(c, running_stats={"variance": "bessel"})),
    explanation="the fused kernel's batch variance is Bessel-corrected and _fused_batch_norm folds it into "
                "moving_variance as is (_bessels_correction_test_only=True), while y uses the biased one",
    link=_FUSED_ISSUE,
)

NONFUSED_BIASED = Deviation(
    name="tf.v1.layers non-fused path: biased moving variance",
    applies_to="inputs that do not take the fused kernel (rank 2/3, other axes), cases asking "
               "for a Bessel running variance, with an update from N >= 2",
    applies=lambda c, d: not takes_fused_path(c) and _variance_kind(c) == "bessel" and g.updates_visibly(c),
    behaviour=MatchesVariant("running variance is the biased batch variance",
                             lambda c: variant(c, running_stats={"variance": "biased"})),
    explanation="the non-fused path folds the biased variance of tf.nn.moments into moving_variance "
                "(no N/(N-1)); the fused path of the same layer is Bessel-corrected",
    link=_SOURCE,
)

# Order matters: the first deviation that applies to a case is the one judged.
DEVIATIONS = (EMPTY_BATCH_NAN, FLOAT32_VARIANCE_OVERFLOW, FLOAT64_DECAY_ROUNDED, FUSED_BESSEL, NONFUSED_BIASED)


def unsupported_running_reason(config, api: str) -> str | None:
    """What a plain-EMA TF1 layer cannot express in the running-statistics knobs."""
    rs = config.running_stats
    if rs.rule != "ema":
        return f"{api} has no cumulative-average option (momentum is a fixed EMA decay)"
    if rs.zero_debias:
        return f"{api} has no zero-debias option (moving averages are a plain EMA from the initial value)"
    if rs.num_updates_schedule:
        return f"{api} has no num_updates decay schedule (momentum is fixed)"
    return None


def unsupported_epsilon_reason(config, api: str) -> str | None:
    if config.epsilon_mode != "add_inside_sqrt":
        return f"{api} only adds epsilon inside the square root (rsqrt(var + epsilon)); no {config.epsilon_mode}"
    return None


def unsupported_param_dtype_reason(config, api: str) -> str | None:
    """TF1 layers keep parameters in the input dtype, float32 for half inputs."""
    own = "float32" if config.input_dtype in ("float16", "bfloat16") else config.input_dtype
    if config.param_dtype != own:
        return (f"{api} keeps its variables in {own} for {config.input_dtype} inputs; "
                f"cannot hold {config.param_dtype} parameters")
    return None


class TfV1LayersAdapter(Adapter):
    """tf.compat.v1.layers.batch_normalization, one cached graph + session per configuration."""

    name = "tf.v1.layers"
    framework = "tensorflow"
    extra = "tensorflow"
    requires = ("tensorflow", "tf_keras")
    device_kinds = ("cpu", "cuda")
    environment = {"TF_USE_LEGACY_KERAS": "1"}
    deviations = DEVIATIONS
    notes = "TF1 graph mode (TF_USE_LEGACY_KERAS=1, tf_keras); update ops run explicitly per step"

    def __init__(self):
        self._cache = None

    def devices(self):
        from .common import tf_devices

        return tf_devices()

    def supports(self, case, device):
        from .graph import inference_update_reason

        config = case.config
        return (unsupported_epsilon_reason(config, _API) or unsupported_running_reason(config, _API)
                or unsupported_param_dtype_reason(config, _API) or inference_update_reason(case, _API))

    def run(self, case, device):
        from .graph import GraphCache, run_case

        self._cache = self._cache or GraphCache()
        layer = self._cache.get(_graph_key(case, device), lambda: _build_graph(case, device))
        if layer.built.fused != takes_fused_path(case):
            raise RuntimeError(f"Expected: fused path {takes_fused_path(case)} (adapter's rule). "
                               f"Received: fused kernel in graph {layer.built.fused}")
        return run_case(layer, case)


def _graph_key(case, device):
    c = case.config
    return (device, case.rank, c.channel_axis, case.channels, c.input_dtype, c.effective_epsilon,
            c.scale, c.center, c.running_stats.decay)


def _build_graph(case, device):
    from .common import tf
    from .graph import BuiltLayer, GraphLayer, variables_by_role

    c = case.config
    v1 = tf().compat.v1
    knobs = dict(axis=c.channel_axis, momentum=c.running_stats.decay, epsilon=c.effective_epsilon,
                 center=c.center, scale=c.scale, fused=None, name="bn")

    def build(x):
        y_train = v1.layers.batch_normalization(x, training=True, **knobs)
        updates = list(v1.get_collection(v1.GraphKeys.UPDATE_OPS))
        y_eval = v1.layers.batch_normalization(x, training=False, reuse=True, **knobs)
        return BuiltLayer(y_train, y_eval, updates, variables_by_role(v1.global_variables()))

    return GraphLayer(build, c.input_dtype, case.rank, c.channel_axis, case.channels, device)
