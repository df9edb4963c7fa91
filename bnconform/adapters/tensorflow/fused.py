"""tf.compat.v1.nn.fused_batch_norm (the FusedBatchNormV3 kernel), eager, one call per step.

Translation table (canonical knob -> framework argument):

==========================  =====================================================================
channel_axis 1 / last       ``data_format="NCHW"/"NHWC"`` (rank 4), ``"NCDHW"/"NDHWC"`` (rank 5)
rank 2 ``[N, C]``           ``tf.reshape`` to ``[N, 1, 1, C]``, ``"NHWC"``; y reshaped back (tf-slim)
rank 3 ``[N, L, C]``        ``tf.reshape`` to ``[N, L, 1, C]``, ``"NHWC"``; y reshaped back
rank 3 ``[N, C, L]``        ``tf.reshape`` to ``[N, C, L, 1]``, ``"NCHW"``; y reshaped back
epsilon (+ epsilon_floor)   ``epsilon=config.effective_epsilon`` (added inside rsqrt)
scale / center              ``scale=gamma`` / ``offset=beta``; the op requires both tensors, so a
                            switched-off one is passed as ones / zeros (what Keras does)
decay (weight on old)       ``exponential_avg_factor = 1 - decay`` (weight on the new batch), with
                            ``mean``/``variance`` = the running statistics; in training the op
                            then RETURNS the updated running statistics
batch step, update          ``is_training=True`` with the running stats and the factor above
batch step, no update       ``is_training=True, exponential_avg_factor=1.0`` (returns the batch
                            mean and variance; the running stats are simply not replaced)
running step                ``is_training=False`` with the running statistics
dtypes                      x float16/bfloat16/float32; scale/offset/mean/variance float32
==========================  =====================================================================

The variance the op returns in training is Bessel-corrected (N/(N-1)), so it is never reported
as the (biased) ``batch_var``; the running variance it keeps is therefore the Bessel kind.

Ranks 2 and 3: the op takes only 4-D and 5-D x, and its users reach lower ranks by a reshape,
as tf-slim's ``batch_norm(fused=True)`` does in ``_fused_batch_norm`` (v1.1.0, SLIM_RESHAPE
below): a rank-2 ``[N, C]`` becomes ``[-1, 1, 1, C]`` for NHWC (``[-1, C, 1, 1]`` for NCHW) before
the op and the output is reshaped to the input's shape after it (SLIM_RESHAPE_BACK); tf-slim routes
every rank-2 input there unless weights, renorm or ``fused=False`` rule it out (SLIM_ROUTING:
``rank in [2, 4]``, ``rank == 2``; ``fused=None`` means True). Rank 3 gets the same
reshape with its length as H: unit axes appended to the spatial axes, the channel axis kept where
it is, so ``data_format`` still names it (neither higher layer fuses rank 3: tf-slim sends it to
its non-fused code, and tf_keras' fused layer takes rank 4 and 5 only, leaving "reshape it to 4D"
as a TODO). The statistics cannot change: the CPU kernel (KERNEL) always computes on an NHWC
``[rest_size, C]`` view (an NCHW x is transposed to NHWC and y back, exact copies), and a unit
axis adds no element to ``rest_size = N * H * W``, which is the N of the case. The reshapes run
inside the gradient tape, so dx comes back in x's shape.

Capabilities: ranks 2 to 5 with the channel axis at 1 or last; half/float32 inputs with float32
scale/offset/mean/variance (no float64 kernel); epsilon inside the sqrt; a plain EMA with one
fixed factor (no cumulative rule, zero-debias or num_updates schedule); a Bessel-corrected
running variance (a convention: biased cases whose results depend on it are unsupported); no
inference step that updates; no model extensions.

Gradients: a step with an upstream ``dy`` makes the same call under a ``tf.GradientTape``
watching x, scale and offset (the ones / zeros stand-ins of a switched-off gamma / beta are not
watched: no dgamma / dbeta). TensorFlow's registered gradient of the op is its own kernel,
FusedBatchNormGradV3: with ``is_training=True`` it reads the batch mean and variance the forward
saved (reserve_space_1 / 2; on CPU the biased variance) and gives the full derivative
through the batch moments; with ``is_training=False`` it runs on the running statistics passed in
(the inference formula dx = dy * scale * rsqrt(var + eps)), transposing NCHW / NCDHW to
channels-last first. Forward-only steps run no tape.
"""

from __future__ import annotations

from ...judging.capabilities import Capabilities
from ...judging.selectors import device_in, input_dtype_in, rank_in
from ..base import Adapter, Deviation, Raises
from ..findings import empty_batch_nan_running_stats, float32_variance_overflow
from .common import (PLAIN_EMA, TF_ENVIRONMENT, empty_rank5_fused_gradient, signature_default, tape_gradients, tf,
                     tf_device_scope, tf_devices, to_numpy, to_tensor)

API = "tf.compat.v1.nn.fused_batch_norm"
KERNEL = "https://github.com/tensorflow/tensorflow/blob/master/tensorflow/core/kernels/fused_batch_norm_op.cc"
# tf-slim 1.1.0 (the installed release): [N, C] -> [-1, 1, 1, C] / [-1, C, 1, 1], the op, y back to x's shape.
_SLIM_LAYERS = "https://github.com/google-research/tf-slim/blob/v1.1.0/tf_slim/layers/layers.py"
SLIM_RESHAPE = f"{_SLIM_LAYERS}#L278-L285"
SLIM_RESHAPE_BACK = f"{_SLIM_LAYERS}#L426-L457"
SLIM_ROUTING = f"{_SLIM_LAYERS}#L593-L613"
_FORMATS = {(4, "first"): "NCHW", (4, "last"): "NHWC", (5, "first"): "NCDHW", (5, "last"): "NDHWC"}

# Before TensorFlow 2.14 the CPU FusedBatchNormV3 registered for bfloat16 was the oneDNN placeholder
# (mkl_tmp_bf16_ops.cc), which only raises; the graph rewrite replaces it for 4-D input, not 5-D. Pull
# request 60413 (merged 2023-07-22) registered the Eigen bfloat16 kernels. Measured: 2.12.1 and 2.13.1
# raise on rank-5 bfloat16 input (inference and training), 2.14.1, 2.15.1, 2.16.2 and 2.21.0 run it.
CPU_BFLOAT16_RANK5_RAISES = Deviation(
    name="fused-bn-cpu-bfloat16-rank5-raises",
    kind="dtype",
    applies=input_dtype_in("bfloat16") & rank_in(5) & device_in("cpu"),
    behaviour=Raises("InvalidArgumentError", "Op does not support bfloat16 inputs"),
    explanation="before TensorFlow 2.14 the CPU FusedBatchNormV3 kernel registered for bfloat16 is the oneDNN "
                "placeholder, which raises unless the oneDNN graph pass replaces the op, and that pass takes 4-D "
                "input only: a valid rank-5 (NCDHW / NDHWC) bfloat16 batch norm cannot run on CPU (2.12.1, 2.13.1); "
                "the Eigen bfloat16 kernels were registered by this pull request, first released in 2.14",
    link="https://github.com/tensorflow/tensorflow/pull/60413",
    versions="<2.14",
)

FUSED_CAPABILITIES = Capabilities(
    **PLAIN_EMA, running_variance=frozenset({"bessel"}), ranks=frozenset({2, 3, 4, 5}),
    channel_positions=frozenset({"first", "last"}),
    dtypes=frozenset({("float32", "float32"), ("float16", "float32"), ("bfloat16", "float32")}),
    step_kinds=frozenset({("batch", True), ("batch", False), ("running", False)}),
    gradients=frozenset({"batch", "running"}))


class TfFusedBatchNormAdapter(Adapter):
    """Runs each step through ``tf.compat.v1.nn.fused_batch_norm``, threading the running stats."""
    environment = TF_ENVIRONMENT

    name = "tf.fused_batch_norm"
    framework = "tensorflow"
    extra = "tensorflow"
    requires = ("tensorflow",)
    device_kinds = ("cpu", "cuda")
    notes = ("2-D/3-D x reshaped to 4-D with unit spatial axes (as tf-slim does for 2-D); scale/center off "
             "passed as ones/zeros; the op's unbiased batch variance is not reported")
    decay_parameter = ("exponential_avg_factor", "new")
    capabilities = FUSED_CAPABILITIES
    deviations = (
        empty_batch_nan_running_stats(
            "fused-bn-empty-batch-nan-running-stats",
            "the kernel's batch mean is sum * (1/rest_size) = 0 * inf = NaN for N == 0, and "
            "exponential_avg_factor folds it into the running statistics",
            KERNEL),
        float32_variance_overflow(
            "fused-bn-float32-variance-overflow",
            "the kernel sums x_centered.square() in float32 (U, the scale dtype; T only for x and y): "
            "squared deviations above 3.4e38 are inf, so rsqrt(var + eps) = 0, y = offset and dx = dgamma = 0, "
            "where the float64 oracle stays finite (measured on the rank-2 cases: x ~ 1e37 gives y = beta, "
            "off by up to 2.84; x ~ 1e21 gives dx = 0 for 6.5e-22 and dgamma = 0 for 2.49)",
            KERNEL),
        CPU_BFLOAT16_RANK5_RAISES,
    ) + empty_rank5_fused_gradient("fused-bn", API)

    def devices(self):
        return tf_devices()

    def framework_defaults(self):
        """``exponential_avg_factor`` (weight on the new batch) and ``epsilon`` from the signature."""
        op = tf().compat.v1.nn.fused_batch_norm
        return {"decay_parameter": signature_default(op, "exponential_avg_factor"),
                "epsilon": signature_default(op, "epsilon")}

    def run(self, case, device):
        with tf_device_scope(device):
            state = _FusedState(case)
            return [state.step(step) for step in case.steps]


def fused_layout(shape, channel_axis: int) -> tuple[list[int], str | None]:
    """The shape x is given to the op and its ``data_format`` (None: the op cannot take it).

    Ranks 4 and 5 pass as they are. Ranks 2 and 3 get unit axes appended to their spatial axes
    (module docstring): ``[N, C]`` -> ``[N, 1, 1, C]`` NHWC (axis 1 is also the last axis, and
    NHWC is tf-slim's default), ``[N, L, C]`` -> ``[N, L, 1, C]`` NHWC, ``[N, C, L]`` ->
    ``[N, C, L, 1]`` NCHW. Only reshapes: no element moves, y is reshaped back to ``shape``."""
    shape, rank = list(shape), len(shape)
    side = "last" if channel_axis == rank - 1 else "first" if channel_axis == 1 else None
    if rank >= 4 or side is None:
        return shape, _FORMATS.get((rank, side))
    units = [1] * (4 - rank)
    return (shape[:-1] + units + shape[-1:], "NHWC") if side == "last" else (shape + units, "NCHW")


class _FusedState:
    """Per-case arguments of the op plus the running statistics it returned last."""

    def __init__(self, case):
        config, state = case.config, case.initial_state
        ones, zeros = tf().ones([case.channels]), tf().zeros([case.channels])
        self.case = case
        self.scale = to_tensor(state.gamma, "float32") if config.scale else ones
        self.offset = to_tensor(state.beta, "float32") if config.center else zeros
        self.running_mean = to_tensor(state.running_mean, "float32")
        self.running_var = to_tensor(state.running_var, "float32")
        self.factor = 1.0 - config.running_stats.decay if config.running_stats.decay is not None else 1.0

    def _call(self, x, mean, var, is_training, factor):
        """The op on x reshaped as :func:`fused_layout` says; y comes back in x's shape (the
        reshapes are ops, so a tape around this call differentiates through them). A 4-D / 5-D x
        gets no reshape: its dx is the kernel's own, folded 5-D empty batches included."""
        shape, data_format = fused_layout(x.shape, self.case.config.channel_axis)
        reshaped = shape != list(x.shape)  # ranks 4 and 5 call the op on x itself, reshape-free
        y, mean, var = tf().compat.v1.nn.fused_batch_norm(
            tf().reshape(x, shape) if reshaped else x, self.scale, self.offset, mean=mean, variance=var,
            epsilon=self.case.config.effective_epsilon, data_format=data_format,
            is_training=is_training, exponential_avg_factor=factor)
        return (tf().reshape(y, x.shape) if reshaped else y), mean, var

    def step(self, step):
        x = to_tensor(step.x, self.case.config.input_dtype)
        if step.dy is None:
            y, reported = self._call_for(step, x)
            return {"y": to_numpy(y), **reported}
        config = self.case.config
        gamma, beta = self.scale if config.scale else None, self.offset if config.center else None
        with tf().GradientTape() as tape:
            tape.watch([v for v in (x, gamma, beta) if v is not None])
            y, reported = self._call_for(step, x)
        grads = tape_gradients(tape, y, to_tensor(step.dy, config.input_dtype), x, gamma, beta)
        return {"y": to_numpy(y), **reported, **grads}

    def _call_for(self, step, x) -> tuple:
        """One call of the op as the step says: y (a tensor) and the other outputs it reports."""
        if not step.is_training:
            y, _, _ = self._call(x, self.running_mean, self.running_var, False, 1.0)
            return y, {}
        if not step.update_running_stats:
            y, batch_mean, _unbiased_var = self._call(x, None, None, True, 1.0)
            return y, {"batch_mean": to_numpy(batch_mean)}
        y, self.running_mean, self.running_var = self._call(x, self.running_mean, self.running_var,
                                                            True, self.factor)
        return y, {"running_mean": to_numpy(self.running_mean), "running_var": to_numpy(self.running_var)}
