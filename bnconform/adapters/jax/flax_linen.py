"""flax.linen.BatchNorm, applied functionally with variables built straight from the case.

Translation (canonical knob -> flax.linen.BatchNorm argument):

    channel_axis            -> axis (any axis; no transposition)
    epsilon (+ floor)       -> epsilon = max(epsilon, epsilon_floor)   (added inside rsqrt)
    scale / center          -> use_scale / use_bias
    running_stats.decay     -> momentum (weight on the old statistic, the same convention)
    gamma, beta             -> variables["params"]["scale" / "bias"]
    running_mean / var      -> variables["batch_stats"]["mean" / "var"]
    normalize_with "batch"  -> use_running_average=False, mutable=["batch_stats"]
    normalize_with "running"-> use_running_average=True
    update_running_stats    -> keep the returned batch_stats (False: keep the old ones; flax is
                               functional, so discarding the update is how it is expressed)
    replica_sizes           -> axis_name = "replicas", the step under jax.shard_map over R host CPU
                               devices (replicas.py); unequal or empty replicas padded to the largest
                               with mask=False rows (BatchNorm's documented ``mask``), dropped from y

FlaxLinenAdapter keeps flax's default ``use_fast_variance=True`` (Var = E[x^2] - E[x]^2, clamped
at 0); FlaxLinenExactVarianceAdapter sets ``use_fast_variance=False`` (Var = E[(x - E[x])^2]).

Capabilities (``JAX_CAPABILITIES``): eps inside the square root, a biased running variance (flax
folds the variance it normalizes with into batch_stats['var']; there is no Bessel option), a plain
EMA with a constant momentum (no zero-debias, no schedule, no cumulative rule), updates only in
training mode. flax keeps no update counter, so num_updates is not returned, and the batch moments
are not exposed by the layer.

Cross-replica findings (common.REPLICA_FINDINGS, re-verified on the replicas family's biased twins):
the statistics are lax.pmean of each device's masked means, so unequal replicas get the mean of the
replicas' moments and an empty replica's NaN reaches every device.

Gradients (both modes): jax.vjp of the same ``apply`` that produced y, with respect to x and
``params`` (scale, bias), the mutable ``batch_stats`` an auxiliary output (common.differentiated);
flax puts no stop_gradient on the batch mean or variance, so training dx flows through both.

Speed: variables are built from the case (no ``init``); one jitted step function per
(axis, use_scale, use_bias, use_fast_variance) runs both modes through ``lax.cond`` and takes
decay and epsilon as traced scalars, so cases of the same input shape share one compiled program.
"""

from __future__ import annotations

import functools

from .common import dataclass_defaults, empty_batch_dgamma_nan, in_mode, load_jax
from .flax_common import (REPLICA_FINDINGS, FLAX_AT, FLAX_EMPTY_BATCH_POISONS_RUNNING_STATS, FLAX_FLOAT32_VARIANCE_OVERFLOW,
                          FLAX_NORMALIZATION_SOURCE, FlaxAdapter, fast_variance_cancels, run_flax_steps)
from .replicas import REPLICA_AXIS, Programs, placement, sharded

EMPTY_BATCH_DGAMMA_NAN = empty_batch_dgamma_nan(
    "flax-empty-batch-dgamma-nan", "_normalize computes y = (x - mean) * (rsqrt(var + epsilon) * scale) + bias",
    f"{FLAX_AT}linen/normalization.py#L206")


@functools.lru_cache(maxsize=None)
def load_linen():
    load_jax()
    import flax.linen

    return flax.linen


def build_step(axis: int, use_scale: bool, use_bias: bool, use_fast_variance: bool, static: bool | None = None,
               mesh=None):
    """A pure step: (params, batch_stats, x, training, momentum, epsilon, mask) -> (y, batch_stats
    after); both modes behind the traced ``training`` unless ``static`` fixes one (common.in_mode).
    With a ``mesh`` the layer synchronizes over its axis (``axis_name``) and the step runs under
    shard_map, x and mask split over the replicas (replicas.sharded)."""
    nn = load_linen()

    def step(params, stats, x, training, momentum, epsilon, mask=None):
        layer = nn.BatchNorm(axis=axis, momentum=momentum, epsilon=epsilon, use_scale=use_scale,
                             use_bias=use_bias, use_fast_variance=use_fast_variance,
                             axis_name=None if mesh is None else REPLICA_AXIS)

        def train(v):
            y, updated = layer.apply(v, x, use_running_average=False, mask=mask, mutable=["batch_stats"])
            return y, updated["batch_stats"]

        def infer(v):
            return layer.apply(v, x, use_running_average=True, mask=mask), v["batch_stats"]

        return in_mode(static, training, train, infer, {"params": params, "batch_stats": stats})

    return step if mesh is None else sharded(step, mesh, sharded_at=(2, 6))


# The cells: 1e4 + N(0,1) in float32, 1e8 + N(0,1) in float64 and the N=2 batches at ratio ~100.
FAST_VARIANCE_CANCELS = fast_variance_cancels(
    "flax-fast-variance-cancellation",
    "use_fast_variance=True (the default) computes max(0, E[x^2] - E[x]^2): for 1e4 + N(0,1) in float32 y is "
    "off by up to 362 (|y| ~ 1), for 1e8 + N(0,1) in float64 by up to 992, and N=2 float32 batches by ~2.4e3 "
    "ulp; the backward differentiates the same E[x^2] - E[x]^2, so dx and dgamma inherit it (dx off by up to 558 "
    "on the 1e4 + N(0,1) float32 data of gradients/offset_1e4_float32_train); use_fast_variance=False passes them",
    FLAX_NORMALIZATION_SOURCE)


class FlaxLinenAdapter(FlaxAdapter):
    """flax.linen.BatchNorm with its defaults (use_fast_variance=True)."""

    name = "flax.linen"
    use_fast_variance = True
    deviations = (FAST_VARIANCE_CANCELS, FLAX_FLOAT32_VARIANCE_OVERFLOW, FLAX_EMPTY_BATCH_POISONS_RUNNING_STATS,
                  EMPTY_BATCH_DGAMMA_NAN, *REPLICA_FINDINGS["flax.linen"])
    notes = ("variables built from the case, no init; training without update discards the "
             "returned batch_stats; use_fast_variance=True (flax default); replicas: axis_name under shard_map "
             "on R CPU devices, unequal ones padded with mask=False rows")

    def __init__(self):
        self._programs = Programs(build_step, x_at=2)  # gradient programs compiled only for steps with dy
        self._steps, self._gradient_steps = self._programs.steps, self._programs.gradient_steps

    def framework_defaults(self):
        return dataclass_defaults(load_linen().BatchNorm, "momentum", "epsilon")

    def run(self, case, device):
        config = case.config
        key = (config.channel_axis, config.scale, config.center, self.use_fast_variance)
        return run_flax_steps(self._programs, key, case, placement(case, device, masked=True))


class FlaxLinenExactVarianceAdapter(FlaxLinenAdapter):
    """flax.linen.BatchNorm with use_fast_variance=False (two-pass variance)."""

    name = "flax.linen.exact_variance"
    use_fast_variance = False
    deviations = (FLAX_FLOAT32_VARIANCE_OVERFLOW, FLAX_EMPTY_BATCH_POISONS_RUNNING_STATS, EMPTY_BATCH_DGAMMA_NAN,
                  *REPLICA_FINDINGS["flax.linen.exact_variance"])
    notes = ("variables built from the case, no init; training without update discards the "
             "returned batch_stats; use_fast_variance=False; replicas: axis_name under shard_map on R CPU "
             "devices, unequal ones padded with mask=False rows")
