"""The NumPy float64 oracle: computes every expected result of a case from config and inputs.

Inputs arrive already quantized to their dtype (a float16 case's x holds float16 values); the
oracle widens them to float64 and does all arithmetic there. Batch moments use two passes::

    mean_c = sum(x_c) / N
    var_c  = sum((x_c - mean_c) ** 2) / N        (biased; this is what normalizes)

so that float64 cancellation never decides a case. Formulas for the forward pass and the running
statistics are in :mod:`bnconform.model`. IEEE semantics are kept on purpose: a NaN or infinity
in one channel makes that channel's statistics NaN and never touches another channel.
"""

from __future__ import annotations

import numpy as np

from .model import Case, Config, State, Step, count_per_channel


def reduction_axes(rank: int, channel_axis: int) -> tuple[int, ...]:
    """Every axis but the channel axis."""
    return tuple(a for a in range(rank) if a != channel_axis)


def broadcast(values: np.ndarray, rank: int, channel_axis: int) -> np.ndarray:
    """Reshape a per-channel vector so it broadcasts along ``channel_axis``."""
    shape = [1] * rank
    shape[channel_axis] = values.shape[0]
    return values.reshape(shape)


def batch_moments(x: np.ndarray, channel_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Two-pass float64 mean and biased variance per channel (NaN for an empty batch)."""
    x = np.asarray(x, dtype=np.float64)
    axes = reduction_axes(x.ndim, channel_axis)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        mean = x.sum(axis=axes) / count_per_channel(x.shape, channel_axis)
        centered = x - broadcast(mean, x.ndim, channel_axis)
        var = (centered * centered).sum(axis=axes) / count_per_channel(x.shape, channel_axis)
    return mean, var


def inverse_std(var: np.ndarray, config: Config) -> np.ndarray:
    """1 / denominator, with epsilon placed as ``config.epsilon_mode`` says."""
    eps = config.effective_epsilon
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if config.epsilon_mode == "add_inside_sqrt":
            return 1.0 / np.sqrt(var + eps)
        if config.epsilon_mode == "add_outside_sqrt":
            return 1.0 / (np.sqrt(var) + eps)
        return 1.0 / np.sqrt(np.maximum(var, eps))  # max_inside_sqrt; NaN stays NaN


def normalize(x, mean, var, state: State, config: Config) -> np.ndarray:
    """y = gamma * (x - mean) * inverse_std(var) + beta, per channel, in float64."""
    x = np.asarray(x, dtype=np.float64)
    axis, rank = config.channel_axis, x.ndim
    gamma = state.gamma.astype(np.float64) if config.scale else np.ones_like(mean)
    beta = state.beta.astype(np.float64) if config.center else np.zeros_like(mean)
    with np.errstate(invalid="ignore", over="ignore"):
        centered = x - broadcast(mean, rank, axis)
        scaled = centered * broadcast(inverse_std(var, config), rank, axis)
        return scaled * broadcast(gamma, rank, axis) + broadcast(beta, rank, axis)


class _RunningState:
    """Running statistics in float64 plus the zero-debias accumulators the model implies."""

    def __init__(self, state: State, config: Config):
        self.rules = config.running_stats
        self.mean = state.running_mean.astype(np.float64)
        self.var = state.running_var.astype(np.float64)
        self.count = state.num_updates
        self.biased_mean = np.zeros_like(self.mean)  # zero-debias accumulators start at 0
        self.biased_var = np.zeros_like(self.var)
        self.decay_product = 1.0

    def update(self, mean: np.ndarray, var: np.ndarray, n: int) -> None:
        """Fold one batch's statistics into the running statistics (model docstring)."""
        rs = self.rules
        if rs.variance == "bessel":
            var = var * (n / max(n - 1, 1))
        with np.errstate(invalid="ignore", over="ignore"):
            if rs.rule == "cumulative":
                self.mean = self.mean + (mean - self.mean) / (self.count + 1)
                self.var = self.var + (var - self.var) / (self.count + 1)
            else:
                self._ema(mean, var, self._decay())
        self.count += 1

    def _decay(self) -> float:
        rs = self.rules
        if rs.num_updates_schedule:
            return min(rs.decay, (1.0 + self.count) / (10.0 + self.count))
        return rs.decay

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

    Batch moments are None where the step does not normalize with the batch or the batch is
    empty. y always uses the statistics from before the step's own update.
    """
    running = _RunningState(initial, config)
    results = []
    for step in steps:
        results.append(_run_step(config, initial, running, step))
    return results


def _run_step(config: Config, initial: State, running: _RunningState, step: Step) -> dict:
    x = np.asarray(step.x, dtype=np.float64)
    n = count_per_channel(x.shape, config.channel_axis)
    mean, var = batch_moments(x, config.channel_axis)
    if step.normalize_with == "batch":
        y = normalize(x, mean, var, initial, config)
    else:
        y = normalize(x, running.mean, running.var, initial, config)
    if step.update_running_stats and n > 0:
        running.update(mean, var, n)
    has_batch = step.normalize_with == "batch" and n > 0
    return {
        "y": y,
        "batch_mean": mean if has_batch else None,
        "batch_var": var if has_batch else None,
        "running_mean": running.mean.copy(),
        "running_var": running.var.copy(),
        "num_updates": running.count,
    }


def run_case(case: Case) -> list[dict]:
    """Expected results for every step of ``case`` (what the oracle adapter returns)."""
    return run_steps(case.config, case.initial_state, case.steps)
