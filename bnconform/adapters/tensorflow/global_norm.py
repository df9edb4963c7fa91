"""tf.compat.v1.nn.batch_norm_with_global_normalization: TF's deprecated inference-only BN op.

In TF 2.x the function is a Python wrapper over ``tf.nn.batch_normalization``: it normalizes with
the mean and variance it is given (no batch statistics of its own, no state), and applies gamma
only when ``scale_after_normalization=True``. Its docstring asks for a 4-D input with 1-D params
matching the LAST dimension; the implementation broadcasts along the last axis of any rank, so
cases of rank >= 2 run, with a channels-first input transposed to channels-last (and y back).

Translation table (canonical knob -> framework argument):

==========================  =====================================================================
channel_axis                channel axis moved last (``tf.transpose``), params 1-D
normalize_with="running"    ``m=running_mean, v=running_var`` (the case's initial statistics)
epsilon (+ epsilon_floor)   ``variance_epsilon=config.effective_epsilon`` (added inside rsqrt)
scale on / off              ``gamma=gamma, scale_after_normalization=True / False`` (gamma ignored)
center on / off             ``beta=beta`` / ``beta=None`` (no offset added)
dtypes                      x in the input dtype; m, v, beta, gamma in the param dtype
==========================  =====================================================================

Unsupported: any step that normalizes with batch statistics (training), epsilon outside the
sqrt or as a max.
"""

from __future__ import annotations

from .common import (epsilon_mode_reason, extensions_reason, tf, tf_device_scope, tf_devices, to_numpy,
                         to_tensor)
from ..base import Adapter

API = "tf.compat.v1.nn.batch_norm_with_global_normalization"


class TfGlobalNormalizationAdapter(Adapter):
    """Runs eval steps through ``batch_norm_with_global_normalization`` with the running stats."""

    name = "tf.global_normalization"
    framework = "tensorflow"
    extra = "tensorflow"
    requires = ("tensorflow",)
    device_kinds = ("cpu", "cuda")
    notes = "inference only; channels-first inputs transposed to channels-last (params follow the last axis)"

    def devices(self):
        return tf_devices()

    def supports(self, case, device):
        reason = extensions_reason(case, API)
        if reason:
            return reason
        if any(step.is_training for step in case.steps):
            return (f"{API} is inference-only: it normalizes with the mean/variance passed in and "
                    "computes no batch statistics")
        if case.rank < 2:
            return f"{API} needs a channel axis plus at least one other axis; received rank {case.rank}"
        return epsilon_mode_reason(case.config, API)

    def run(self, case, device):
        with tf_device_scope(device):
            args = _arguments(case)
            return [{"y": to_numpy(self._normalize(case, step.x, args))} for step in case.steps]

    def _normalize(self, case, x, args):
        order = _channels_last_order(case.rank, case.config.channel_axis)
        inverse = [order.index(axis) for axis in range(case.rank)]
        x = tf().transpose(to_tensor(x, case.config.input_dtype), order)
        y = tf().compat.v1.nn.batch_norm_with_global_normalization(t=x, **args)
        return tf().transpose(y, inverse)


def _channels_last_order(rank: int, channel_axis: int) -> list[int]:
    return [axis for axis in range(rank) if axis != channel_axis] + [channel_axis]


def _arguments(case) -> dict:
    """Keyword arguments of the op, fixed for every step of a case."""
    config, state, dtype = case.config, case.initial_state, case.config.param_dtype
    return {
        "m": to_tensor(state.running_mean, dtype),
        "v": to_tensor(state.running_var, dtype),
        "beta": to_tensor(state.beta, dtype) if config.center else None,
        "gamma": to_tensor(state.gamma, dtype),
        "variance_epsilon": config.effective_epsilon,
        "scale_after_normalization": config.scale,
    }
