"""paddle.nn.BatchNorm1D / 2D / 3D layers, driven through train() and eval().

Translation (canonical knob -> Paddle layer argument):

==========================  ==========================================================
channel first / last        data_format NC, NCL, NCHW, NCDHW / NC, NLC, NHWC, NDHWC
other channel axes          moved to axis 1 and back (paddle.moveaxis), channels-first format
rank 2 / 3 / 4 / 5          BatchNorm1D / BatchNorm1D / BatchNorm2D / BatchNorm3D
epsilon (+ epsilon_floor)   epsilon = max(epsilon, epsilon_floor) (added inside the sqrt)
scale off / center off      weight_attr=False / bias_attr=False (independently)
rule ema, decay d           momentum = d (Paddle weights the OLD statistic, like Keras;
                            torch's momentum of the same name is 1 - d)
param_dtype                 paddle.set_default_dtype while the layer is built (its weight,
                            bias, _mean and _variance take the default dtype)
input_dtype                 the input tensor's dtype (must equal the parameters')
normalize_with batch        layer.train(): batch statistics, running statistics updated
normalize_with running      layer.eval(): running statistics, no update
==========================  ==========================================================

use_global_stats stays None (the default: batch statistics in train(), running ones in eval()); the
``paddle.use_global_stats`` row drives the steps through that flag instead.

Capabilities (``PADDLE_CAPABILITIES``): no training step without an update and no inference step
with one; the EMA rule only; float32 and float64 (no half CPU kernel). Conventions: eps inside the
square root, a biased running variance, no zero-debias, no decay schedule. Paddle keeps no update
counter, so no num_updates is returned.

Gradients: a step with an upstream dy calls the layer on an x with stop_gradient=False and returns
``paddle.grad`` of y with cotangent dy w.r.t. x and the layer's own ``weight`` / ``bias``
parameters (see ``common.vjp``).
"""

from __future__ import annotations

from ...caseformat import model
from .common import (PaddleAdapter, data_format, from_layout, gradient_context, input_tensor, paddle,
                     quiet_training_warning, shared_deviations, signature_defaults, to_layout, to_numpy, vjp)

_LAYER_BY_RANK = {2: "BatchNorm1D", 3: "BatchNorm1D", 4: "BatchNorm2D", 5: "BatchNorm3D"}


class PaddleLayerAdapter(PaddleAdapter):
    """Runs each case through a cached nn.BatchNorm{1,2,3}D, reset to the case's initial state."""

    name = "paddle.nn"
    notes = ("nn.BatchNorm1D/2D/3D with train()/eval() (use_global_stats=None); channels first or last via "
             "data_format, other channel axes moved to axis 1 and back; CPU wheel")
    deviations = shared_deviations("nn.BatchNorm")

    def __init__(self):
        self._layers = {}

    def framework_defaults(self):
        return signature_defaults(paddle().nn.BatchNorm2D.__init__)

    def run(self, case: model.Case, device: str) -> list[dict]:
        layer = self._layer(case)
        self._reset(layer, case)
        return [self._step(layer, case, step) for step in case.steps]

    def _layer(self, case: model.Case):
        """A cached layer for (class, C, param dtype, scale, center, epsilon, momentum, data_format)."""
        config = case.config
        key = (_LAYER_BY_RANK[case.rank], case.channels, config.param_dtype, config.scale, config.center,
               config.effective_epsilon, config.running_stats.decay, data_format(case)[0])
        if key not in self._layers:
            self._layers[key] = _build(*key)
        return self._layers[key]

    @staticmethod
    def _reset(layer, case: model.Case) -> None:
        """Load gamma, beta and the running statistics from the case's initial state."""
        state, dtype = case.initial_state, case.config.param_dtype
        pairs = ((layer.weight, state.gamma), (layer.bias, state.beta),
                 (layer._mean, state.running_mean), (layer._variance, state.running_var))
        for tensor, values in pairs:
            if tensor is not None:
                tensor.set_value(values.astype(dtype))

    @staticmethod
    def _step(layer, case: model.Case, step: model.Step) -> dict:
        """One layer call (train() or eval()); with dy, the VJP of that call comes back too."""
        moved_from = data_format(case)[1]
        layer.train() if step.is_training else layer.eval()
        x = input_tensor(step, case.config.input_dtype)
        with gradient_context(step), quiet_training_warning():
            y = from_layout(layer(to_layout(x, moved_from)), moved_from)
        gradients = vjp(y, step, {"dx": x, "dgamma": layer.weight, "dbeta": layer.bias}) if step.dy is not None else {}
        return {"y": to_numpy(y), **gradients,
                "running_mean": to_numpy(layer._mean), "running_var": to_numpy(layer._variance)}


def _build(class_name: str, channels: int, dtype: str, scale: bool, center: bool, epsilon: float,
           decay: float, layout: str):
    """A BatchNorm layer whose parameters are created in ``dtype`` (Paddle's default-dtype switch)."""
    module = paddle()
    previous = module.get_default_dtype()
    module.set_default_dtype(dtype)
    try:
        return getattr(module.nn, class_name)(
            channels, momentum=decay, epsilon=epsilon, data_format=layout,
            weight_attr=None if scale else False, bias_attr=None if center else False)
    finally:
        module.set_default_dtype(previous)
