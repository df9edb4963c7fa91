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

Capabilities: inference steps only (no batch statistics, no state, so the running-statistics
conventions never matter); epsilon inside the sqrt only; no model extensions.

Gradients (inference steps, the only kind): a step with an upstream ``dy`` makes the same call,
transposes included, under a ``tf.GradientTape`` watching x, gamma (only when
``scale_after_normalization``: otherwise the op ignores it) and beta (when passed), and returns
``tape.gradient(y, [x, gamma, beta], output_gradients=dy)``. Forward-only steps run no tape.
"""

from __future__ import annotations

from ...judging.capabilities import Capabilities
from ..base import Adapter
from .common import (EPS_INSIDE, TF_ENVIRONMENT, half_parameter_gradients, signature_default, tape_gradients, tf,
                     tf_device_scope, tf_devices, to_numpy, to_tensor)

API = "tf.compat.v1.nn.batch_norm_with_global_normalization"


class TfGlobalNormalizationAdapter(Adapter):
    """Runs eval steps through ``batch_norm_with_global_normalization`` with the running stats."""
    environment = TF_ENVIRONMENT

    name = "tf.global_normalization"
    keeps_state = False  # a function per call: the caller keeps the running statistics
    framework = "tensorflow"
    extra = "tensorflow"
    requires = ("tensorflow",)
    device_kinds = ("cpu", "cuda")
    notes = "inference only; channels-first inputs transposed to channels-last (params follow the last axis)"

    # Inference only: it normalizes with the mean/variance passed in and computes no batch statistics.
    capabilities = Capabilities(epsilon_modes=EPS_INSIDE, step_kinds=frozenset({("running", False)}),
                                gradients=frozenset({"running"}))
    deviations = (half_parameter_gradients("tf.global_normalization"),)

    def devices(self):
        return tf_devices()

    def framework_defaults(self):
        """No EMA knob; ``variance_epsilon`` defaults to None in the signature (the op needs a value)."""
        op = tf().compat.v1.nn.batch_norm_with_global_normalization
        return {"decay_parameter": None, "epsilon": signature_default(op, "variance_epsilon")}

    def run(self, case, device):
        with tf_device_scope(device):
            args = _arguments(case)
            return [self._step(case, step, args) for step in case.steps]

    def _step(self, case, step, args) -> dict:
        x = to_tensor(step.x, case.config.input_dtype)
        if step.dy is None:
            return {"y": to_numpy(self._normalize(case, x, args))}
        gamma = args["gamma"] if case.config.scale else None  # ignored by the op when scale is off
        with tf().GradientTape() as tape:
            tape.watch([v for v in (x, gamma, args["beta"]) if v is not None])
            y = self._normalize(case, x, args)
        grads = tape_gradients(tape, y, to_tensor(step.dy, case.config.input_dtype), x, gamma, args["beta"])
        return {"y": to_numpy(y), **grads}

    def _normalize(self, case, x, args):
        order = _channels_last_order(case.rank, case.config.channel_axis)
        inverse = [order.index(axis) for axis in range(case.rank)]
        y = tf().compat.v1.nn.batch_norm_with_global_normalization(t=tf().transpose(x, order), **args)
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
