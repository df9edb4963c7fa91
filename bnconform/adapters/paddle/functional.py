"""paddle.nn.functional.batch_norm, called once per step with the case's own tensors.

Translation (canonical knob -> batch_norm argument):

==========================  ==========================================================
channel first / last        data_format NC, NCL, NCHW, NCDHW / NC, NLC, NHWC, NDHWC
other channel axes          moved to axis 1 and back (paddle.moveaxis), channels-first format
epsilon (+ epsilon_floor)   epsilon = max(epsilon, epsilon_floor) (added inside the sqrt)
scale on / off              weight = gamma / weight=None
center on / off             bias = beta / bias=None
rule ema, decay d           momentum = d (weight on the OLD statistic)
param_dtype                 dtype of weight, bias, running_mean, running_var
running_mean / running_var  always passed (required); updated in place by training calls
==========================  ==========================================================

Two rows drive the steps through different flags of the same call:

* ``paddle.functional``: ``training=True`` for batch statistics (and an update), ``training=False``
  for the running statistics; ``use_global_stats=None`` (the default).
* ``paddle.use_global_stats``: ``training=False`` throughout (a model in eval()), the
  statistics chosen by ``use_global_stats``: False = batch statistics (the kernel's
  ``trainable_statistics``: it updates the running statistics too), True = running statistics.
  ``nn.BatchNorm*D(use_global_stats=False)`` under ``eval()`` makes exactly this call (its forward()
  passes ``self.training`` and ``self._use_global_stats``): "always normalize with the batch".

Capabilities (``PADDLE_CAPABILITIES``): running_mean / running_var are required arguments, so
there is no training call without an update; no inference call with one; EMA only; float32 and
float64. Conventions: eps inside the square root, a biased running variance.

Gradients: a step with an upstream dy runs the same call with x, weight and bias differentiable
(``stop_gradient=False``) and returns ``paddle.grad`` of y with cotangent dy (see ``common.vjp``).
"""

from __future__ import annotations

from ...caseformat import model
from ...judging.selectors import where
from ..base import Deviation, Mismatches
from .common import (GRAD_KERNEL_SOURCE, PaddleAdapter, data_format, from_layout, gradient_context, input_tensor,
                     paddle, shared_deviations, signature_defaults, to_layout, to_numpy, to_tensor, vjp)


class PaddleFunctionalAdapter(PaddleAdapter):
    """Calls F.batch_norm per step with training=True/False; running statistics are tensors it updates in place."""

    name = "paddle.functional"
    notes = ("F.batch_norm with training=True/False (use_global_stats=None); channels first or last via "
             "data_format, other channel axes moved to axis 1 and back; CPU wheel")
    deviations = shared_deviations("F.batch_norm")

    def framework_defaults(self):
        return signature_defaults(paddle().nn.functional.batch_norm)

    def run(self, case: model.Case, device: str) -> list[dict]:
        params = _Params(case)
        return [self._step(case, params, step) for step in case.steps]

    def flags(self, step: model.Step) -> dict:
        """The call's mode arguments for a step."""
        return {"training": step.is_training, "use_global_stats": None}

    def _step(self, case: model.Case, params: "_Params", step: model.Step) -> dict:
        """One F.batch_norm call; with dy, the VJP of that call (dx, dgamma, dbeta) comes back too."""
        config = case.config
        layout, moved_from = data_format(case)
        x = input_tensor(step, config.input_dtype)
        with gradient_context(step):
            y = paddle().nn.functional.batch_norm(
                to_layout(x, moved_from), params.running_mean, params.running_var, params.weight, params.bias,
                momentum=config.running_stats.decay, epsilon=config.effective_epsilon, data_format=layout,
                **self.flags(step))
            y = from_layout(y, moved_from)
        gradients = vjp(y, step, {"dx": x, "dgamma": params.weight, "dbeta": params.bias}) if step.dy is not None else {}
        return {"y": to_numpy(y), **gradients,
                "running_mean": to_numpy(params.running_mean), "running_var": to_numpy(params.running_var)}


@where("a training step (batch statistics) of a non-empty batch that carries an upstream gradient dy")
def _batch_gradient_step(case: model.Case) -> bool:
    # On an empty batch dx is empty and dgamma an empty sum (0) whichever statistics the kernel uses.
    return any(step.is_training and n > 0 and step.dy is not None
               for step, n in zip(case.steps, case.reduce_counts()))


class PaddleGlobalStatsAdapter(PaddleFunctionalAdapter):
    """F.batch_norm with training=False throughout, the statistics chosen by use_global_stats."""

    name = "paddle.use_global_stats"
    notes = ("F.batch_norm with training=False (a model in eval()) and use_global_stats=False for batch-statistics "
             "steps, True for running-statistics steps: what nn.BatchNorm*D(use_global_stats=...) does under eval()")
    deviations = shared_deviations("F.batch_norm") + (
        Deviation(
            name="eval-batch-stats-gradient-uses-running-stats",
            kind="defect",
            applies=_batch_gradient_step,
            behaviour=Mismatches(("dx", "dgamma"), "dx and dgamma are those of normalizing with the running "
                                 "statistics (just updated), while y was normalized with the batch statistics"),
            explanation="with training=False and use_global_stats=False the forward kernel normalizes with the batch "
                        "(test_mode = is_test && !trainable_statistics is false) but the gradient kernel sets "
                        "use_global_stats = is_test || use_global_stats, so dx = gamma * dy / sqrt(running_var + eps) "
                        "and dgamma uses the running mean: the gradient of another function than the one computed",
            link=GRAD_KERNEL_SOURCE,
        ),
    )

    def flags(self, step: model.Step) -> dict:
        return {"training": False, "use_global_stats": not step.is_training}


class _Params:
    """The case's initial weight / bias (None where scale / center is off; differentiable when some
    step carries dy) and running-statistics tensors."""

    def __init__(self, case: model.Case):
        config, state, dtype = case.config, case.initial_state, case.config.param_dtype
        differentiable = bool(case.gradient_modes)
        self.weight = _parameter(state.gamma, dtype, differentiable) if config.scale else None
        self.bias = _parameter(state.beta, dtype, differentiable) if config.center else None
        self.running_mean = to_tensor(state.running_mean, dtype)
        self.running_var = to_tensor(state.running_var, dtype)


def _parameter(values, dtype: str, differentiable: bool):
    tensor = to_tensor(values, dtype)
    tensor.stop_gradient = not differentiable
    return tensor
