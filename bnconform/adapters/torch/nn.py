"""torch.nn.BatchNorm1d / 2d / 3d modules, driven through train() and eval().

Translation (canonical knob -> torch module argument):

==========================  ==========================================================
channel_axis                must be 1; any other axis is moved to 1 and back (movedim)
rank 2 / 3 / 4 / 5          BatchNorm1d / BatchNorm1d / BatchNorm2d / BatchNorm3d
epsilon (+ epsilon_floor)   eps = max(epsilon, epsilon_floor) (torch adds it inside sqrt)
scale and center            affine=True (weight = gamma, bias = beta)
scale off and center off    affine=False
rule ema, decay d           momentum = 1 - d (torch weights the NEW batch statistic)
rule cumulative             momentum=None (1 / num_batches_tracked), counter from num_updates
param_dtype                 the module's dtype (running stats and weight/bias)
input_dtype                 the input tensor's dtype (half inputs with float32 params)
normalize_with batch        module.train() - always updates the running stats
normalize_with running      module.eval() - never updates them
==========================  ==========================================================

Capabilities (``TORCH_CAPABILITIES`` narrowed): scale and center switch together (one ``affine``
flag); no training step without an update (train() always updates while track_running_stats=True,
and track_running_stats=False would drop the running stats that the eval steps need); no eval
step with an update. Conventions: eps inside the square root, Bessel running variance, no
zero-debias, no num_updates schedule.

Gradients: a step with an upstream dy calls the module on a leaf x that requires grad, with
autograd on, and returns ``torch.autograd.grad`` of y with cotangent dy w.r.t. x and the
module's own ``weight`` / ``bias`` Parameters (dgamma, dbeta; none when affine=False); see
``common.vjp``. Nothing accumulates into ``.grad`` of the cached module.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ...caseformat import model
from ...judging.selectors import training_step, updates_on_empty_batch, where
from ..base import Deviation, Mismatches
from .common import (TORCH_CAPABILITIES, TorchAdapter, device_context, from_channels_first, gradient_context,
                     input_tensor, shared_deviations, signature_defaults, state_tensors, to_channels_first, to_numpy,
                     torch, torch_device, torch_dtype, vjp)

_MODULE_BY_RANK = {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}
_SOURCE_FORWARD = "https://github.com/pytorch/pytorch/blob/main/torch/nn/modules/batchnorm.py"


@where("the cumulative rule with a running mean that is +-Inf after an update and a later non-empty update")
def _infinite_running_mean_updated_again(case: model.Case) -> bool:
    """Cumulative rule; some update leaves a running mean of +-Inf, and a later step updates again."""
    if case.config.running_stats.rule != "cumulative":
        return False
    infinite = False
    for step, n in zip(case.steps, case.reduce_counts()):
        if step.update_running_stats and n > 0 and infinite:
            return True
        infinite = infinite or bool(np.isinf(step.expected["running_mean"]).any())
    return False


@where("the cumulative rule with an empty training batch (N == 0) followed by another update")
def _empty_batch_before_cumulative_update(case: model.Case) -> bool:
    """Cumulative rule, and an N == 0 training step is followed by a real update."""
    if case.config.running_stats.rule != "cumulative":
        return False
    seen_empty = False
    for step, n in zip(case.steps, case.reduce_counts()):
        if step.is_training and step.update_running_stats:
            if n > 0 and seen_empty:
                return True
            seen_empty = seen_empty or n == 0
    return False


def momentum_for(config: model.Config) -> float | None:
    """torch's momentum: the weight on the NEW statistic (1 - decay), or None for cumulative."""
    rs = config.running_stats
    return None if rs.rule == "cumulative" else 1.0 - rs.decay


class TorchModuleAdapter(TorchAdapter):
    """Runs each case through a cached nn.BatchNorm{1,2,3}d, reset to the case's initial state."""

    name = "torch.nn"
    notes = ("nn.BatchNorm1d/2d/3d with train()/eval(); channels-last and other channel axes run by "
             "moving the axis to 1 and back; 'cuda-nocudnn' = cuda with torch.backends.cudnn disabled")
    deviations = shared_deviations("nn.BatchNorm") + (
        Deviation(
            name="empty-batch-counts-as-update",
            kind="defect",
            applies=_empty_batch_before_cumulative_update,
            behaviour=Mismatches(("num_updates", "running_mean", "running_var", "y"),
                                 "running stats (and eval outputs using them) after the empty batch"),
            explanation="forward() increments num_batches_tracked even for an empty batch (the stats stay put), "
                        "so the next cumulative factor is 1/(n+2) instead of 1/(n+1)",
            link=_SOURCE_FORWARD,
        ),
        Deviation(
            name="cumulative-average-keeps-infinite-mean",
            kind="edge",
            applies=_infinite_running_mean_updated_again,
            behaviour=Mismatches(("running_mean",), "an infinite running mean stays infinite (the model's is NaN)"),
            explanation="with momentum=None forward() passes 1/num_batches_tracked as F.batch_norm's momentum, "
                        "whose update is (1 - m) * running + m * batch: (1/2) Inf + b / 2 = Inf, where the "
                        "model's cumulative form r + (b - r) / n gives Inf - Inf = NaN (found by bnconform fuzz)",
            link=_SOURCE_FORWARD,
        ),
        Deviation(
            name="empty-batch-counted",
            kind="defect",
            applies=updates_on_empty_batch & training_step(0, 0),
            behaviour=Mismatches(("num_updates",), "num_batches_tracked counts the empty batch"),
            explanation="forward() increments num_batches_tracked before F.batch_norm, which leaves the running "
                        "stats unchanged for an empty batch; the counter no longer equals the number of updates",
            link=_SOURCE_FORWARD,
        ),
    )
    capabilities = replace(TORCH_CAPABILITIES, separate_scale_center=False,
                           step_kinds=frozenset({("batch", True), ("running", False)}))

    def __init__(self):
        self._modules = {}

    def framework_defaults(self):
        return signature_defaults(torch().nn.BatchNorm2d.__init__)

    def run(self, case: model.Case, device: str) -> list[dict]:
        with device_context(device):
            module = self._module(case, device)
            self._reset(module, case, device)
            return [self._step(module, case, step, device) for step in case.steps]

    def _module(self, case: model.Case, device: str):
        """A cached module for (class, C, param dtype, affine, eps, momentum, device)."""
        config = case.config
        key = (_MODULE_BY_RANK[case.rank], case.channels, config.param_dtype, config.scale,
               config.effective_epsilon, momentum_for(config), device)
        if key not in self._modules:
            cls = getattr(torch().nn, key[0])
            self._modules[key] = cls(case.channels, eps=config.effective_epsilon, momentum=momentum_for(config),
                                     affine=config.scale, track_running_stats=True,
                                     device=torch_device(device), dtype=torch_dtype(config.param_dtype))
        return self._modules[key]

    def _reset(self, module, case: model.Case, device: str) -> None:
        """Load gamma, beta, running stats and num_batches_tracked from the case's initial state."""
        tensors = state_tensors(case, device)
        if module.affine:
            module.weight.copy_(tensors["gamma"])
            module.bias.copy_(tensors["beta"])
        module.running_mean.copy_(tensors["running_mean"])
        module.running_var.copy_(tensors["running_var"])
        module.num_batches_tracked.fill_(case.initial_state.num_updates)

    def _forward(self, module, x):
        """The module's output for a channels-first x; rows that compile or export the module
        (torch.nn+compile, ...) run it their way here, with the same state around it."""
        return module(x)

    def _step(self, module, case: model.Case, step: model.Step, device: str) -> dict:
        """One module call (train() or eval()); with dy, the VJP of that call comes back too."""
        axis = case.config.channel_axis
        module.train(step.is_training)
        x = input_tensor(step, case.config.input_dtype, device)
        with gradient_context(step):
            y = from_channels_first(self._forward(module, to_channels_first(x, axis)), axis)
        wrt = {"dx": x, "dgamma": module.weight, "dbeta": module.bias}
        return {"y": to_numpy(y), **(vjp(y, step, wrt, device) if step.dy is not None else {}),
                "running_mean": to_numpy(module.running_mean),
                "running_var": to_numpy(module.running_var),
                "num_updates": int(module.num_batches_tracked.item())}
