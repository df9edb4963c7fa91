"""mlx.nn.BatchNorm, driven through the module's train() and eval().

Translation (canonical knob -> MLX argument):

==========================  ==========================================================
channel_axis                must be the last axis (MLX is channels-last: NC, NLC, NHWC);
                            any other axis is moved there and back (mx.moveaxis)
rank 2 / 3 / 4              one BatchNorm (it raises for other ranks)
epsilon (+ epsilon_floor)   eps = max(epsilon, epsilon_floor), added inside the rsqrt
scale and center            affine=True (weight = gamma, bias = beta)
scale off and center off    affine=False (no weight, no bias)
rule ema, decay d           momentum = 1 - d (MLX weights the NEW batch statistic)
param_dtype                 dtype of weight, bias, running_mean, running_var
input_dtype                 the input array's dtype (float64 runs on the CPU stream)
normalize_with batch        module.train() - always updates the running stats
normalize_with running      module.eval() - never updates them
==========================  ==========================================================

Conventions (read in ``BatchNorm.__call__``): eps inside the square root; the running variance is
``mx.var(x, ddof=1)``, Bessel-corrected; no zero-debias, no schedule, no cumulative rule, no
update counter. One ``affine`` flag, so scale and center switch together; ``track_running_stats``
is fixed at construction, so there is no training step without an update.

Gradients: ``mx.vjp`` of a function that loads weight and bias into the module and calls it on x
(the same call that produced y, with cotangent dy in y's dtype) gives dx, dgamma, dbeta, in
training and inference. The running statistics the call writes are plain arrays of that same
graph, read after the vjp.

Devices: MLX's GPU backend is Metal (Apple silicon); the Linux wheels (``mlx[cpu]``: mlx plus
mlx-cpu, which holds libmlx.so; plain ``pip install mlx`` fails to import on Linux with
"libmlx.so: cannot open shared object file") run on the CPU only.

Importing this module does not import MLX.
"""

from __future__ import annotations

import functools
import inspect
from types import SimpleNamespace

import numpy as np

from ...caseformat import model
from ...caseformat.dtypes import numpy_dtype
from ...judging.capabilities import Capabilities
from ...judging.selectors import (epsilon_zero, half_params_rounded_mean_shows, input_dtype_in, param_dtype_in,
                                  training_step, updates_on_empty_batch)
from ..base import Adapter, Deviation, Mismatches, Raises
from ..findings import empty_batch_nan_running_stats, float32_variance_overflow

SOURCE = "https://github.com/ml-explore/mlx/blob/main/python/mlx/nn/layers/normalization.py"
SOURCE_VAR = "https://github.com/ml-explore/mlx/blob/main/mlx/ops.cpp"  # mean(), var()


@functools.lru_cache(maxsize=None)
def mlx() -> SimpleNamespace:
    """mlx.core and mlx.nn, imported on first use."""
    import mlx.core as core
    import mlx.nn as nn

    return SimpleNamespace(core=core, nn=nn)


def to_array(array, name: str):
    """An mx.array of dtype ``name`` with the array's exact values (bfloat16 travels as float32,
    which holds every bfloat16 value; float64 must be asked for, MLX would narrow it to float32)."""
    mx = mlx().core
    values = np.asarray(array).astype(np.float32 if name == "bfloat16" else numpy_dtype(name))
    if values.size == 0:
        # An empty batch holds no values: made from NumPy, MLX 0.32.4's CPU sum over its empty
        # axis sometimes never returns (the stream thread loops in reduction_op/nd_loop; seen in
        # 1 of 3 fresh processes at the second call); mx.zeros of the same shape does not.
        return mx.zeros(values.shape, dtype=getattr(mx, name))
    return mx.array(values, dtype=getattr(mx, name))


def to_numpy(array) -> np.ndarray:
    """NumPy value of an mx.array (evaluated); bfloat16 widened to float32 (exact)."""
    mx = mlx().core
    if array.dtype == mx.bfloat16:
        array = array.astype(mx.float32)
    return np.array(array, copy=True)


def dtype_name(dtype) -> str:
    mx = mlx().core
    return next(name for name in ("float64", "float32", "float16", "bfloat16") if getattr(mx, name) == dtype)


class MlxBatchNormAdapter(Adapter):
    """mlx.nn.BatchNorm on the CPU, one module per case (loading the case's state is assigning arrays)."""

    name = "mlx.nn"
    framework = "mlx"
    extra = "mlx"
    requires = ("mlx.core",)
    device_kinds = ("cpu",)
    decay_parameter = ("momentum", "new")
    notes = ("nn.BatchNorm with train()/eval(), channels-last: other channel axes moved to the end and back; "
             "CPU only here (MLX's GPU backend is Metal, Apple silicon)")
    capabilities = Capabilities(
        epsilon_modes=frozenset({"add_inside_sqrt"}), running_variance=frozenset({"bessel"}),
        zero_debias=frozenset({False}), num_updates_schedule=frozenset({False}),
        running_rules=frozenset({"ema"}), separate_scale_center=False, ranks=frozenset({2, 3, 4}),
        step_kinds=frozenset({("batch", True), ("running", False)}),
        gradients=frozenset({"batch", "running"}))
    deviations = (
        Deviation(
            name="single-value-per-channel-raises",
            kind="edge",
            applies=training_step(1, 1),
            behaviour=Raises("ValueError", "requires more than one value per channel"),
            explanation="__call__ refuses N == 1 in training (the Bessel-corrected running variance would be 0/0); "
                        "the canonical model gives y = beta and keeps the biased variance 0",
            link=SOURCE,
        ),
        Deviation(
            name="eps-zero-rejected",
            kind="edge",
            applies=epsilon_zero,
            behaviour=Raises("ValueError", "'eps' must be positive"),
            explanation="the constructor raises for eps <= 0 (training and inference alike); the canonical model "
                        "divides by sqrt(var) and yields inf/NaN only for a constant channel",
            link=SOURCE,
        ),
        Deviation(
            name="half-batch-statistics",
            kind="dtype",
            applies=input_dtype_in("float16", "bfloat16") & param_dtype_in("float32") & training_step(2, None),
            behaviour=Mismatches(("running_mean", "running_var", "dgamma", "y"),
                                 "float32 running stats (and dgamma) carry half rounding; a half overflow makes y NaN"),
            explanation="_calc_stats takes mx.mean and mx.var of the half input, which return half: var subtracts the "
                        "half mean and squares in half (inf beyond |x - mean| ~ 256 in float16), and momentum * mean "
                        "is a half product, so the float32 running stats are updated from half-rounded statistics",
            link=SOURCE_VAR,
        ),
        Deviation(
            name="half-parameters-half-arithmetic",
            kind="dtype",
            applies=half_params_rounded_mean_shows,
            behaviour=Mismatches(("y",), "y from the half batch mean and variance, normalized in half arithmetic"),
            explanation="with weight, bias and running stats in the input's half dtype as well, nothing in __call__ is "
                        "float32: _calc_stats returns the half mx.mean / mx.var and (x - mean) * mx.rsqrt(var + eps), "
                        "weight * x + bias are half operations, so y carries the rounded batch mean (|mean - "
                        "round(mean)| * |gamma| / sigma) plus half rounding of each step (found by bnconform fuzz)",
            link=SOURCE,
        ),
        float32_variance_overflow(
            "float32-variance-overflow",
            "mx.var squares x - mean in the input dtype (float32): for |x| ~ 1e37 the variance is inf, "
            "rsqrt gives 0 and y = beta, and the running variance becomes inf where the exact value is ~2e73",
            SOURCE_VAR),
        empty_batch_nan_running_stats(
            "empty-batch-nan-running-stats",
            "__call__ checks only for N == 1, so an empty training batch (N == 0) updates the running "
            "stats from mean and var of nothing: NaN at rank 2; at rank >= 3 mx.mean over the several "
            "empty axes gives inf (measured on degenerate/n0_rank4_train: running_mean inf, running_var "
            "NaN); the model leaves the state unchanged",
            SOURCE, applies=updates_on_empty_batch & training_step(0, 0),
            effect=" (the mean inf for a rank >= 3 batch)"),
    )

    def framework_defaults(self):
        parameters = inspect.signature(mlx().nn.BatchNorm.__init__).parameters
        return {"decay_parameter": parameters["momentum"].default, "epsilon": parameters["eps"].default}

    def run(self, case: model.Case, device: str) -> list[dict]:
        module = self._module(case)
        return [self._step(module, case, step) for step in case.steps]

    def _module(self, case: model.Case):
        """A BatchNorm holding the case's initial state in the param dtype (MLX builds nothing
        per shape: arrays are lazy and evaluated per call, so there is nothing to cache)."""
        config, state = case.config, case.initial_state
        module = mlx().nn.BatchNorm(case.channels, eps=config.effective_epsilon, affine=config.scale,
                                    momentum=1.0 - config.running_stats.decay, track_running_stats=True)
        dtype = config.param_dtype
        if config.scale:
            module.weight, module.bias = to_array(state.gamma, dtype), to_array(state.beta, dtype)
        module.running_mean = to_array(state.running_mean, dtype)
        module.running_var = to_array(state.running_var, dtype)
        return module

    def _step(self, module, case: model.Case, step: model.Step) -> dict:
        """One call in train() or eval(); with dy, the VJP of that same call."""
        mx, axis, last = mlx().core, case.config.channel_axis, case.rank - 1
        module.train(step.is_training)
        x = to_array(step.x, case.config.input_dtype)

        def call(x, *params):
            if params:
                module.weight, module.bias = params
            return mx.moveaxis(module(mx.moveaxis(x, axis, last)), last, axis)

        if step.dy is None:
            out = {"y": to_numpy(call(x))}
        else:
            out = self._vjp(module, call, x, step)
        return {**out, "running_mean": to_numpy(module.running_mean), "running_var": to_numpy(module.running_var)}

    @staticmethod
    def _vjp(module, call, x, step: model.Step) -> dict:
        """y and d(sum(dy * y)) / d(x, weight, bias) by ``mx.vjp`` with cotangent dy (in y's dtype)."""
        mx = mlx().core
        primals = [x, module.weight, module.bias] if "weight" in module else [x]
        (y,), grads = mx.vjp(call, primals, [to_array(step.dy, dtype_name(_output_dtype(module, x)))])
        if len(primals) == 3:  # the traced parameters go back to the concrete ones for later steps
            module.weight, module.bias = primals[1:]
        names = ("dx", "dgamma", "dbeta")[:len(primals)]
        return {"y": to_numpy(y), **{key: to_numpy(grad) for key, grad in zip(names, grads)}}


def _output_dtype(module, x):
    """The dtype of y (weight * x_hat + bias): x's, promoted with the weight's (a half input with
    float32 weight gives float32), found by MLX's own promotion on a zero-size product."""
    mx = mlx().core
    return (mx.zeros((0,), dtype=x.dtype) * module.weight[:0]).dtype if "weight" in module else x.dtype
