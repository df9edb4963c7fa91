"""The NumPy float64 oracle: computes every expected result of a case from config and inputs.

Inputs arrive already quantized to their dtype (a float16 case's x holds float16 values); the
oracle widens them to float64 and does all arithmetic there. Batch moments use two passes::

    mean_c = sum(x_c) / N
    var_c  = sum((x_c - mean_c) ** 2) / N        (biased; this is what normalizes)

so that float64 cancellation never decides a case. Formulas for the forward pass and the running
statistics are in :mod:`bnconform.caseformat.model`. IEEE semantics are kept on purpose: a NaN or infinity
in one channel makes that channel's statistics NaN and never touches another channel.

The extensions, also in float64 and also two-pass (formulas in :mod:`bnconform.caseformat.model`)::

    weighted:  W = sum(w) over every non-channel element (w broadcast from axis 0)
               mu = sum(w x) / W,   v = sum(w (x - mu) ** 2) / W
    ghost:     per ghost batch g (indices from ghost_indices): (mu_g, v_g) two-pass, y_g
               normalized with them; the update sees (mean_g mu_g, mean_g v_g) and M = N / G
    renorm:    y = gamma * ((x - mu_B) * rsqrt(v_B + eps) * r + d) + beta, with r, d from
               renorm_correction (pre-update renorm statistics); then the updates
"""

from __future__ import annotations

import numpy as np

from ..caseformat.model import RENORM_STATE_KEYS, Case, Config, State, Step, count_per_channel
from . import gradients as backward
# The shared reductions stay reachable as oracle.batch_moments etc., the names tests and users call.
from .moments import (batch_moments, broadcast, ghost_indices, inverse_std, reduction_axes,  # noqa: F401
                      weighted_moments)


def renorm_correction(mean, var, running: "_RunningState", config: Config) -> tuple[np.ndarray, np.ndarray]:
    """Batch Renormalization (r, d) from the pre-update renorm statistics (model docstring)."""
    knobs, eps = config.renorm, config.effective_epsilon
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        reference = np.maximum(running.renorm_stddev, np.sqrt(eps))  # avoids 0 early on (tf_keras)
        r = np.sqrt(var + eps) / reference
        d = (mean - running.renorm_mean) / reference
    if knobs.rmin is not None:
        r = np.maximum(r, knobs.rmin)
    if knobs.rmax is not None:
        r = np.minimum(r, knobs.rmax)
    if knobs.dmax is not None:
        d = np.clip(d, -knobs.dmax, knobs.dmax)
    return r, d


def normalize(x, mean, var, state: State, config: Config, correction=None) -> np.ndarray:
    """y = gamma * (x - mean) * inverse_std(var) + beta, per channel, in float64.

    ``correction`` = (r, d) from :func:`renorm_correction` gives gamma * (xhat * r + d) + beta.
    """
    x = np.asarray(x, dtype=np.float64)
    axis, rank = config.channel_axis, x.ndim
    gamma = state.gamma.astype(np.float64) if config.scale else np.ones_like(mean)
    beta = state.beta.astype(np.float64) if config.center else np.zeros_like(mean)
    with np.errstate(invalid="ignore", over="ignore"):
        centered = x - broadcast(mean, rank, axis)
        scaled = centered * broadcast(inverse_std(var, config), rank, axis)
        if correction is not None:
            scaled = scaled * broadcast(correction[0], rank, axis) + broadcast(correction[1], rank, axis)
        return scaled * broadcast(gamma, rank, axis) + broadcast(beta, rank, axis)


class _RunningState:
    """Running statistics in float64 plus the zero-debias accumulators the model implies."""

    def __init__(self, state: State, config: Config):
        self.rules = config.running_stats
        self.config = config
        self.mean = state.running_mean.astype(np.float64)
        self.var = state.running_var.astype(np.float64)
        self.count = state.num_updates
        self.biased_mean = np.zeros_like(self.mean)  # zero-debias accumulators start at 0
        self.biased_var = np.zeros_like(self.var)
        self.decay_product = 1.0
        if config.renorm is not None:
            self.renorm_mean = state.renorm_mean.astype(np.float64)
            self.renorm_stddev = state.renorm_stddev.astype(np.float64)
            self.stddev = state.running_stddev.astype(np.float64)

    def update(self, mean: np.ndarray, var: np.ndarray, n: int) -> None:
        """Fold one batch's statistics into the running statistics (model docstring).

        ``var`` is biased; ``n`` the elements per channel it came from (per ghost batch).
        """
        rs = self.rules
        biased = var
        if rs.variance == "bessel":
            var = var * (n / max(n - 1, 1))
        with np.errstate(invalid="ignore", over="ignore"):
            if self.config.renorm is not None:
                self._renorm_update(mean, biased, var)
            elif rs.rule == "cumulative":
                self.mean = self.mean + (mean - self.mean) / (self.count + 1)
                self.var = self.var + (var - self.var) / (self.count + 1)
            else:
                self._ema(mean, var, self._decay())
        self.count += 1

    def _renorm_update(self, mean, biased_var, var) -> None:
        """Renorm stats track sigma_B; inference tracks the stddev sqrt(var + eps) (tf_keras, paper)."""
        eps, keep, keep_renorm = self.config.effective_epsilon, self.rules.stored_decay, self.config.renorm.decay
        self.renorm_mean = keep_renorm * self.renorm_mean + (1.0 - keep_renorm) * mean
        self.renorm_stddev = keep_renorm * self.renorm_stddev + (1.0 - keep_renorm) * np.sqrt(biased_var + eps)
        self.mean = keep * self.mean + (1.0 - keep) * mean
        self.stddev = keep * self.stddev + (1.0 - keep) * np.sqrt(var + eps)
        self.var = np.maximum(self.stddev * self.stddev - eps, 0.0)

    def renorm_state(self) -> dict:
        """The RENORM_STATE_KEYS after the step (empty without renorm)."""
        if self.config.renorm is None:
            return {}
        return dict(zip(RENORM_STATE_KEYS, (self.renorm_mean.copy(), self.renorm_stddev.copy(), self.stddev.copy())))

    def _decay(self) -> float:
        rs = self.rules
        if rs.num_updates_schedule:
            return min(rs.stored_decay, (1.0 + self.count) / (10.0 + self.count))
        return rs.stored_decay

    def _ema(self, mean, var, decay: float) -> None:
        if not self.rules.zero_debias:
            self.mean = decay * self.mean + (1.0 - decay) * mean
            self.var = decay * self.var + (1.0 - decay) * var
            return
        self.biased_mean = decay * self.biased_mean + (1.0 - decay) * mean
        self.biased_var = decay * self.biased_var + (1.0 - decay) * var
        self.decay_product *= decay
        with np.errstate(divide="ignore", invalid="ignore"):
            self.mean = self.biased_mean / (1.0 - self.decay_product)
            self.var = self.biased_var / (1.0 - self.decay_product)


def run_steps(config: Config, initial: State, steps: list[Step]) -> list[dict]:
    """Expected results of each step: y, batch_mean, batch_var, running_mean/var, num_updates.

    Batch moments are None where the step does not normalize with the batch, the batch is
    empty, or it is split into ghost batches. y always uses the statistics from before the
    step's own update. Renorm cases add the RENORM_STATE_KEYS after the step.
    """
    return run_steps_traced(config, initial, steps)[0]


def run_steps_traced(config: Config, initial: State, steps: list[Step]) -> tuple[list[dict], list]:
    """run_steps plus, per step, what normalized y: (means, variances, gain) for the tolerance.

    means / variances are per channel (per ghost batch and channel, flattened, for ghost steps);
    gain bounds how much a rounding of the mean is amplified beyond gamma / sigma (renorm's r
    and d); the trace is None for an empty batch.
    """
    running = _RunningState(initial, config)
    results, traces = [], []
    for step in steps:
        result, trace = _run_step(config, initial, running, step)
        results.append(result)
        traces.append(trace)
    return results, traces


class _Moments:
    """The batch statistics of one step: per ghost batch, and what the running update sees."""

    def __init__(self, config: Config, x: np.ndarray, step: Step):
        axis, size = config.channel_axis, config.virtual_batch_size
        # Ghost batches apply wherever batch statistics are computed (eval steps ignore them).
        self.ghost = size is not None and (step.is_training or step.update_running_stats)
        if self.ghost:
            self.groups = ghost_indices(x.shape[0], size, config.ghost_split)
            parts = [batch_moments(x[g], axis) for g in self.groups]
            self.means, self.vars = np.stack([p[0] for p in parts]), np.stack([p[1] for p in parts])
            self.mean, self.var = self.means.mean(axis=0), self.vars.mean(axis=0)
            self.count = count_per_channel(x[self.groups[0]].shape, axis)
            return
        if step.sample_weights is not None:
            self.mean, self.var = weighted_moments(x, step.sample_weights, axis)
        else:
            self.mean, self.var = batch_moments(x, axis)
        self.count = count_per_channel(x.shape, axis)


def _normalize_batch(x, moments: _Moments, initial: State, running: _RunningState, config: Config):
    """y from batch statistics, and its tolerance trace (means, variances, gain)."""
    if moments.ghost:
        y = np.empty_like(x)
        for group, mean, var in zip(moments.groups, moments.means, moments.vars):
            y[group] = normalize(x[group], mean, var, initial, config)
        return y, (moments.means.reshape(-1), moments.vars.reshape(-1), 1.0)
    if config.renorm is None:
        return normalize(x, moments.mean, moments.var, initial, config), (moments.mean, moments.var, 1.0)
    r, d = renorm_correction(moments.mean, moments.var, running, config)
    eps = config.effective_epsilon
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # d moves with the mean by 1 / s_R; relative to 1 / sigma_B that is sigma_B / s_R.
        gain = r + np.sqrt(moments.var + eps) / np.maximum(running.renorm_stddev, np.sqrt(eps))
    gain = float(np.nanmax(gain)) if gain.size else 1.0
    return normalize(x, moments.mean, moments.var, initial, config, (r, d)), (moments.mean, moments.var, gain)


def _run_step(config: Config, initial: State, running: _RunningState, step: Step) -> tuple[dict, tuple | None]:
    x = np.asarray(step.x, dtype=np.float64)
    n = count_per_channel(x.shape, config.channel_axis)
    moments = _Moments(config, x, step)
    if step.normalize_with == "batch":
        y, trace = _normalize_batch(x, moments, initial, running, config)
    else:
        trace = (running.mean.copy(), running.var.copy(), 1.0)
        y = normalize(x, running.mean, running.var, initial, config)
    gradients = _gradients(config, initial, running, step, x, moments) if step.dy is not None else {}
    if step.update_running_stats and n > 0:
        running.update(moments.mean, moments.var, moments.count)
    has_batch = step.normalize_with == "batch" and n > 0 and not moments.ghost
    result = {
        "y": y,
        "batch_mean": moments.mean if has_batch else None,
        "batch_var": moments.var if has_batch else None,
        "running_mean": running.mean.copy(),
        "running_var": running.var.copy(),
        **running.renorm_state(),
        "num_updates": running.count,
        **gradients,
    }
    return result, trace if n > 0 else None


def _gradients(config: Config, initial: State, running: _RunningState, step: Step, x, moments: _Moments) -> dict:
    """dx, dgamma, dbeta of the step (bnconform.reference.gradients), from the pre-update statistics."""
    dy = np.asarray(step.dy, dtype=np.float64)
    if step.normalize_with == "running":
        return backward.running_gradients(x, dy, running.mean, running.var, initial, config)
    if moments.ghost:
        return backward.ghost_gradients(x, dy, moments.groups, moments.means, moments.vars, initial, config)
    weights = None
    if step.sample_weights is not None:
        shape = [-1] + [1] * (x.ndim - 1)
        weights = np.broadcast_to(np.asarray(step.sample_weights, np.float64).reshape(shape), x.shape)
    correction = None if config.renorm is None else renorm_correction(moments.mean, moments.var, running, config)
    return backward.batch_gradients(x, dy, moments.mean, moments.var, initial, config, weights, correction)


def run_case(case: Case) -> list[dict]:
    """Expected results for every step of ``case`` (what the oracle adapter returns)."""
    return run_steps(case.config, case.initial_state, case.steps)
