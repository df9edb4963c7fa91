"""torch.nn.functional.batch_norm, called once per step with the case's own tensors.

Translation (canonical knob -> F.batch_norm argument):

==========================  ==========================================================
channel_axis                must be 1; any other axis is moved to 1 and back (movedim)
epsilon (+ epsilon_floor)   eps = max(epsilon, epsilon_floor) (torch adds it inside sqrt)
scale on / off              weight = gamma / weight=None
center on / off             bias = beta / bias=None
rule ema, decay d           momentum = 1 - d (torch weights the NEW batch statistic)
param_dtype                 dtype of weight, bias, running_mean, running_var
input_dtype                 the input tensor's dtype (half inputs with float32 params)
batch stats + update        training=True with running_mean/running_var (updated in place)
batch stats, no update      training=True, running_mean=None, running_var=None
running stats               training=False with running_mean/running_var
==========================  ==========================================================

Capabilities (``TORCH_CAPABILITIES`` narrowed): no cumulative rule (momentum must be a float:
momentum=None raises TypeError; the 1/num_batches_tracked average lives in nn.BatchNorm's
forward(), not in the functional API); no eval step with an update. Conventions: eps inside the
square root, Bessel running variance, no zero-debias, no num_updates schedule.
F.batch_norm keeps no update counter, so no num_updates is returned.

Gradients: a step with an upstream dy runs the same F.batch_norm call with x, weight and bias
as leaves that require grad and returns ``torch.autograd.grad`` of y with cotangent dy (dx, and
dgamma / dbeta where weight / bias are passed); see ``common.vjp``.
"""

from __future__ import annotations

from dataclasses import replace

from ...caseformat import model
from .common import (TORCH_CAPABILITIES, TorchAdapter, device_context, from_channels_first, gradient_context,
                     input_tensor, shared_deviations, signature_defaults, state_tensors, to_channels_first, to_numpy,
                     torch, vjp)


class TorchFunctionalAdapter(TorchAdapter):
    """Calls F.batch_norm per step; running statistics are tensors it updates in place."""

    name = "torch.functional"
    notes = ("F.batch_norm; batch stats without update via running_mean=None; channels-last and other "
             "channel axes by moving the axis to 1 and back; 'cuda-nocudnn' = cuda with cuDNN disabled")
    deviations = shared_deviations("F.batch_norm")
    capabilities = replace(TORCH_CAPABILITIES, running_rules=frozenset({"ema"}))

    def framework_defaults(self):
        return signature_defaults(torch().nn.functional.batch_norm)

    def run(self, case: model.Case, device: str) -> list[dict]:
        with device_context(device):
            params = _Params(case, device)
            return [self._step(case, params, step, device) for step in case.steps]

    def _step(self, case: model.Case, params: "_Params", step: model.Step, device: str) -> dict:
        """One F.batch_norm call; running stats are passed only where the step uses or updates them.
        With dy, the VJP of that call (dx, dgamma, dbeta) comes back too."""
        config = case.config
        track = step.update_running_stats or not step.is_training
        x = input_tensor(step, config.input_dtype, device)
        with gradient_context(step):
            y = self._batch_norm(
                to_channels_first(x, config.channel_axis),
                params.running_mean if track else None, params.running_var if track else None,
                params.weight, params.bias, step.is_training, 1.0 - config.running_stats.decay,
                config.effective_epsilon)
            y = from_channels_first(y, config.channel_axis)
        wrt = {"dx": x, "dgamma": params.weight, "dbeta": params.bias}
        return {"y": to_numpy(y), **(vjp(y, step, wrt, device) if step.dy is not None else {}),
                "running_mean": to_numpy(params.running_mean), "running_var": to_numpy(params.running_var)}

    def _batch_norm(self, x, running_mean, running_var, weight, bias, training, momentum, eps):
        """F.batch_norm on a channels-first x; a row that compiles it (torch.functional+compile) runs
        its program here, with the same tensors around it."""
        return torch().nn.functional.batch_norm(x, running_mean, running_var, weight, bias, training=training,
                                                momentum=momentum, eps=eps)


class _Params:
    """The case's initial weight/bias (None where scale/center is off; leaves that require grad when
    some step carries dy) and running-stat tensors."""

    def __init__(self, case: model.Case, device: str):
        config, tensors = case.config, state_tensors(case, device)
        differentiates = bool(case.gradient_modes)
        self.weight = tensors["gamma"].requires_grad_(differentiates) if config.scale else None
        self.bias = tensors["beta"].requires_grad_(differentiates) if config.center else None
        self.running_mean, self.running_var = tensors["running_mean"], tensors["running_var"]
