"""Per-channel reductions shared by the oracle, its backward pass and the error bounds.

For an input of rank R with channels on ``channel_axis``, statistics reduce over every other axis
(:func:`reduction_axes`) and broadcast back along it (:func:`broadcast`). Moments are two-pass in
float64; :func:`inverse_std` places epsilon as the config's ``epsilon_mode`` says. A module of its
own so that :mod:`.oracle` (forward) and :mod:`.gradients` (backward) both build on it and neither
imports the other's internals.
"""

from __future__ import annotations

import numpy as np

from ..caseformat.model import Config, count_per_channel


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


def weighted_moments(x: np.ndarray, weights: np.ndarray, channel_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Two-pass weighted mean and biased variance; weights run along axis 0 (the batch axis)."""
    x = np.asarray(x, dtype=np.float64)
    axes = reduction_axes(x.ndim, channel_axis)
    w = np.broadcast_to(np.asarray(weights, np.float64).reshape([-1] + [1] * (x.ndim - 1)), x.shape)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        total = w.sum(axis=axes)
        mean = (w * x).sum(axis=axes) / total
        centered = x - broadcast(mean, x.ndim, channel_axis)
        var = (w * centered * centered).sum(axis=axes) / total
    return mean, var


def ghost_indices(batch: int, size: int, split: str) -> list[np.ndarray]:
    """Sample indices of each ghost batch of ``size`` samples (``size`` divides ``batch``).

    contiguous: [0..V), [V..2V), ...; interleaved (tf_keras reshapes to [V, G, ...] and reduces
    over the first axis): {g, g+G, g+2G, ...} for g < G = batch / V.
    """
    count = batch // size
    if split == "contiguous":
        return [np.arange(g * size, (g + 1) * size) for g in range(count)]
    return [np.arange(g, batch, count) for g in range(count)]


def inverse_std(var: np.ndarray, config: Config) -> np.ndarray:
    """1 / denominator, with epsilon placed as ``config.epsilon_mode`` says."""
    eps = config.effective_epsilon
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if config.epsilon_mode == "add_inside_sqrt":
            return 1.0 / np.sqrt(var + eps)
        if config.epsilon_mode == "add_outside_sqrt":
            return 1.0 / (np.sqrt(var) + eps)
        return 1.0 / np.sqrt(np.maximum(var, eps))  # max_inside_sqrt; NaN stays NaN
