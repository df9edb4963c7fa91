"""tf.compat.v1.nn.fused_batch_norm (the FusedBatchNormV3 kernel), eager, one call per step.

Translation table (canonical knob -> framework argument):

==========================  =====================================================================
channel_axis 1 / last       ``data_format="NCHW"/"NHWC"`` (rank 4), ``"NCDHW"/"NDHWC"`` (rank 5)
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

Unsupported: ranks other than 4 and 5, a channel axis other than 1 or last, float64 (no kernel),
params in a dtype other than float32, epsilon outside the sqrt or as a max, the cumulative rule,
zero_debias and the num_updates schedule (exponential_avg_factor is one fixed number).
"""

from __future__ import annotations

from .common import (epsilon_mode_reason, extensions_reason, tf, tf_device_scope, tf_devices, to_numpy,
                         to_tensor)
from ..base import Adapter, Deviation, MatchesVariant, Mismatches, has_training_step, variant

API = "tf.compat.v1.nn.fused_batch_norm"
KERNEL = "https://github.com/tensorflow/tensorflow/blob/master/tensorflow/core/kernels/fused_batch_norm_op.cc"
BESSEL_ISSUE = "https://github.com/tensorflow/tensorflow/issues/55545"
_FORMATS = {(4, "first"): "NCHW", (4, "last"): "NHWC", (5, "first"): "NCDHW", (5, "last"): "NDHWC"}


def _updates_with_biased_variance(case, device) -> bool:
    running = case.config.running_stats
    return running.variance == "biased" and any(s.update_running_stats and s.is_training for s in case.steps)


def _updates_from_empty_batch(case, device) -> bool:
    return any(s.update_running_stats and s.is_training and n == 0
               for s, n in zip(case.steps, case.reduce_counts()))


class TfFusedBatchNormAdapter(Adapter):
    """Runs each step through ``tf.compat.v1.nn.fused_batch_norm``, threading the running stats."""

    name = "tf.fused_batch_norm"
    framework = "tensorflow"
    extra = "tensorflow"
    requires = ("tensorflow",)
    device_kinds = ("cpu", "cuda")
    notes = "4-D/5-D only; scale/center off passed as ones/zeros; the op's unbiased batch variance is not reported"
    deviations = (
        Deviation(
            name="fused-bn-bessel-running-variance",
            applies_to="cases that update running stats with a biased running variance",
            applies=_updates_with_biased_variance,
            behaviour=MatchesVariant("running variance is Bessel-corrected",
                                     lambda c: variant(c, running_stats={"variance": "bessel"})),
            explanation="FusedBatchNormV3 folds the unbiased batch variance (x N/(N-1), rest_size_adjust in "
                        "the CPU kernel) into the running variance, while it normalizes with the biased one",
            link=BESSEL_ISSUE),
        Deviation(
            name="fused-bn-empty-batch-nan-running-stats",
            applies_to="cases with a training update step on an empty batch (N == 0)",
            applies=_updates_from_empty_batch,
            behaviour=Mismatches(("running_mean", "running_var"),
                                 "running mean/variance become NaN instead of staying unchanged"),
            explanation="the kernel's batch mean is sum * (1/rest_size) = 0 * inf = NaN for N == 0, and "
                        "exponential_avg_factor folds it into the running statistics",
            link=KERNEL),
    )

    def devices(self):
        return tf_devices()

    def supports(self, case, device):
        reason = extensions_reason(case, API)
        if reason:
            return reason
        config, running = case.config, case.config.running_stats
        checks = (
            (case.rank not in (4, 5), f"{API} accepts only 4-D and 5-D inputs; received rank {case.rank}"),
            (_data_format(case) is None, f"{API} data_format puts channels at axis 1 or last only; "
                                         f"received channel_axis {config.channel_axis}"),
            (config.input_dtype == "float64", "FusedBatchNormV3 has no float64 kernel (T: half, bfloat16, float)"),
            (config.param_dtype != "float32", "FusedBatchNormV3 takes float32 scale/offset/mean/variance only"),
            (running.rule == "cumulative", f"{API} has no cumulative-average option "
                                           "(exponential_avg_factor is a fixed EMA weight)"),
            (running.zero_debias, f"{API} has no zero-debias option (plain EMA of the passed running stats)"),
            (running.num_updates_schedule, f"{API} has no num_updates decay schedule "
                                           "(exponential_avg_factor is one fixed number)"),
        )
        reason = next((text for failed, text in checks if failed), None)
        return reason or epsilon_mode_reason(config, API)

    def run(self, case, device):
        with tf_device_scope(device):
            state = _FusedState(case)
            return [state.step(step) for step in case.steps]


def _data_format(case) -> str | None:
    axis = case.config.channel_axis
    side = "first" if axis == 1 else "last" if axis == case.rank - 1 else None
    return _FORMATS.get((case.rank, side))


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
        return tf().compat.v1.nn.fused_batch_norm(
            x, self.scale, self.offset, mean=mean, variance=var,
            epsilon=self.case.config.effective_epsilon, data_format=_data_format(self.case),
            is_training=is_training, exponential_avg_factor=factor)

    def step(self, step):
        x = to_tensor(step.x, self.case.config.input_dtype)
        if not step.is_training:
            y, _, _ = self._call(x, self.running_mean, self.running_var, False, 1.0)
            return {"y": to_numpy(y)}
        if not step.update_running_stats:
            y, batch_mean, _unbiased_var = self._call(x, None, None, True, 1.0)
            return {"y": to_numpy(y), "batch_mean": to_numpy(batch_mean)}
        y, self.running_mean, self.running_var = self._call(x, self.running_mean, self.running_var,
                                                            True, self.factor)
        return {"y": to_numpy(y), "running_mean": to_numpy(self.running_mean),
                "running_var": to_numpy(self.running_var)}
