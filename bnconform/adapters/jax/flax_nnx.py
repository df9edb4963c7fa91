"""flax.nnx.BatchNorm, built inside a jitted step with its Variables set from the case.

Translation (canonical knob -> flax.nnx.BatchNorm argument):

    channel_axis            -> axis (any axis; no transposition)
    epsilon (+ floor)       -> epsilon = max(epsilon, epsilon_floor)   (added inside rsqrt)
    scale / center          -> use_scale / use_bias
    running_stats.decay     -> momentum (weight on the old statistic, the same convention)
    param_dtype             -> param_dtype
    gamma, beta             -> the scale / bias Params (set_value)
    running_mean / var      -> the mean / var BatchStats (set_value)
    normalize_with "batch"  -> layer(x, use_running_average=False)  (updates mean / var)
    normalize_with "running"-> layer(x, use_running_average=True)
    update_running_stats    -> keep the BatchStats read after the call (False: keep the old ones)
    replica_sizes           -> axis_name = "replicas", the step under jax.shard_map over R host CPU
                               devices (replicas.py); unequal or empty replicas padded to the largest
                               with mask=False rows (the documented ``mask``), dropped from y

Capabilities (``JAX_CAPABILITIES``, as flax.linen: nnx shares linen's statistics code): eps inside
the square root, a biased running variance, a plain EMA with a constant momentum, updates only in
training mode. No update counter is kept and the batch moments are not exposed, so num_updates /
batch_mean / batch_var are not returned.

Cross-replica findings (common.REPLICA_FINDINGS, re-verified on the replicas family's biased twins):
nnx has its own copy of _compute_stats with linen's lax.pmean of the per-device masked means:
unequal replicas get the mean of their moments, an empty one NaN everywhere.

Gradients (both modes): jax.vjp of the same layer call that produced y, with respect to x and the
values set into the scale / bias Params (the layer is built from them inside the differentiated
function), the BatchStats read after the call an auxiliary output (common.differentiated).

Speed: the layer is constructed inside one jitted step per (axis, use_scale, use_bias,
param_dtype) -- its initializers are dead code that XLA drops -- both modes go through
``lax.cond``, decay and epsilon are traced scalars, so cases of one input shape share a program.
"""

from __future__ import annotations

import functools

from ...caseformat.dtypes import numpy_dtype
from .common import empty_batch_dgamma_nan, in_mode, load_jax, signature_defaults
from .flax_common import (FLAX_AT, FLAX_EMPTY_BATCH_POISONS_RUNNING_STATS, FLAX_FLOAT32_VARIANCE_OVERFLOW,
                          REPLICA_FINDINGS, FlaxAdapter, fast_variance_cancels, run_flax_steps)
from .replicas import REPLICA_AXIS, Programs, placement, sharded

EMPTY_BATCH_DGAMMA_NAN = empty_batch_dgamma_nan(
    "flax-empty-batch-dgamma-nan", "nnx's _normalize computes y = (x - mean) * (rsqrt(var + epsilon) * scale) + bias",
    f"{FLAX_AT}nnx/nn/normalization.py#L171")

NNX_NORMALIZATION_DOCS = "https://flax.readthedocs.io/en/latest/api_reference/flax.nnx/nn/normalization.html"


@functools.lru_cache(maxsize=None)
def load_nnx():
    load_jax()
    from flax import nnx

    return nnx


def build_step(axis: int, use_scale: bool, use_bias: bool, param_dtype: str, static: bool | None = None, mesh=None):
    """A pure step: (params, stats, x, training, momentum, epsilon, mask) -> (y, stats after); both
    modes behind the traced ``training`` unless ``static`` fixes one (common.in_mode). With a
    ``mesh`` the layer synchronizes over its axis (``axis_name``) under shard_map (replicas.sharded)."""
    nnx = load_nnx()
    axis_name = None if mesh is None else REPLICA_AXIS

    def make_layer(params, stats, momentum, epsilon):
        layer = nnx.BatchNorm(stats["mean"].shape[0], axis=axis, momentum=momentum, epsilon=epsilon,
                              use_scale=use_scale, use_bias=use_bias, param_dtype=numpy_dtype(param_dtype),
                              axis_name=axis_name, rngs=nnx.Rngs(0))
        for name, value in params.items():
            _set(getattr(layer, name), value)
        _set(layer.mean, stats["mean"])
        _set(layer.var, stats["var"])
        return layer

    def step(params, stats, x, training, momentum, epsilon, mask=None):
        def run(use_running_average):
            def branch(operands):
                layer = make_layer(*operands, momentum, epsilon)
                y = layer(x, use_running_average=use_running_average, mask=mask)
                return y, {"mean": _get(layer.mean), "var": _get(layer.var)}
            return branch

        return in_mode(static, training, run(False), run(True), (params, stats))

    return step if mesh is None else sharded(step, mesh, sharded_at=(2, 6))


def _set(variable, value) -> None:
    """variable.set_value(value); flax before 0.12.x (a version sweep) has only the ``value`` property."""
    if hasattr(variable, "set_value"):
        variable.set_value(value)
    else:
        variable.value = value


def _get(variable):
    return variable.get_value() if hasattr(variable, "get_value") else variable.value


NNX_FAST_VARIANCE_CANCELS = fast_variance_cancels(
    "nnx-fast-variance-cancellation",
    "nnx.BatchNorm defaults to use_fast_variance=True ('faster, but less numerically stable'): "
    "max(0, E[x^2] - E[x]^2) loses every digit for 1e4 + N(0,1) in float32 and 1e8 + N(0,1) "
    "in float64, and ~2.4e3 ulp on N=2 float32 batches (|mean| ~100 x spread); dx and dgamma, differentiated "
    "through the same formula, inherit it (dx off by up to 558 for 1e4 + N(0,1) in float32)",
    NNX_NORMALIZATION_DOCS)


class FlaxNnxAdapter(FlaxAdapter):
    """flax.nnx.BatchNorm with its defaults (use_fast_variance=True)."""

    name = "flax.nnx"
    deviations = (NNX_FAST_VARIANCE_CANCELS, FLAX_FLOAT32_VARIANCE_OVERFLOW, FLAX_EMPTY_BATCH_POISONS_RUNNING_STATS,
                  EMPTY_BATCH_DGAMMA_NAN, *REPLICA_FINDINGS["flax.nnx"])
    notes = ("layer built in a jitted step with Params/BatchStats set from the case; training without "
             "update keeps the old BatchStats; use_fast_variance=True (default); replicas: axis_name under "
             "shard_map on R CPU devices, unequal ones padded with mask=False rows")

    def __init__(self):
        self._programs = Programs(build_step, x_at=2)  # gradient programs compiled only for steps with dy
        self._steps, self._gradient_steps = self._programs.steps, self._programs.gradient_steps

    def framework_defaults(self):
        return signature_defaults(load_nnx().BatchNorm.__init__, "momentum", "epsilon")

    def run(self, case, device):
        config = case.config
        key = (config.channel_axis, config.scale, config.center, config.param_dtype)
        return run_flax_steps(self._programs, key, case, placement(case, device, masked=True))
