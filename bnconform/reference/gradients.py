"""The oracle's backward pass: dx, dgamma and dbeta of one step, in float64, from the formulas.

For an upstream gradient ``dy`` these are the derivatives of ``sum(dy * y)`` (formulas in
:mod:`bnconform.caseformat.model`). Per channel, with xc = x - mu, f = inverse_std(v) and weights w (1 for
an unweighted batch; W = sum w over the channel's elements)::

    dbeta  = sum(dy)
    dgamma = sum(dy * (xc * f * r + d))              (r = 1, d = 0 without renorm)
    batch:   dx = g r f (dy - (w / W) sum(dy)) + g r f'(v) (2 w xc / W) sum(dy * xc)
    running: dx = g f(v_R) dy

The batch formula is the chain rule through mu and v: dmu/dx_i = w_i / W and
dv/dx_i = 2 w_i xc_i / W (the term through mu vanishes because sum(w xc) = 0). Renorm's r and d
are constants. Ghost batches apply the batch formula to each ghost batch separately.
The tests check all of it against central finite differences of the forward oracle.
"""

from __future__ import annotations

import numpy as np

from ..caseformat.model import Config, State
from .moments import broadcast, inverse_std, reduction_axes


def inverse_std_derivative(var: np.ndarray, config: Config) -> np.ndarray:
    """f'(v) for f = inverse_std, per epsilon mode (0 where v == 0 outside the square root,
    the limit of the whole term there; 0 where max(v, eps) picks eps)."""
    eps, f = config.effective_epsilon, inverse_std(var, config)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if config.epsilon_mode == "add_inside_sqrt":
            return -0.5 * f ** 3
        if config.epsilon_mode == "add_outside_sqrt":
            root = np.sqrt(var)
            return np.where(root > 0, -0.5 * f * f / np.where(root > 0, root, 1.0), 0.0)
        return np.where(var > eps, -0.5 * f ** 3, 0.0)


def _channel_sum(values: np.ndarray, channel_axis: int) -> np.ndarray:
    return values.sum(axis=reduction_axes(values.ndim, channel_axis))


def batch_dx(x, dy, mean, var, gain, config: Config, weights=None) -> np.ndarray:
    """dx of y = gain * (x - mu) * f(v) + const through the batch moments (mu, v) of x.

    ``gain`` is gamma (times renorm's r) per channel; ``weights`` broadcast like x (None = 1).
    """
    axis, rank = config.channel_axis, x.ndim
    w = np.ones_like(x) if weights is None else weights
    total = _channel_sum(w, axis)
    b = lambda v: broadcast(v, rank, axis)  # noqa: E731  (per-channel vector -> broadcastable)
    centered = x - b(mean)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        direct = b(gain * inverse_std(var, config)) * (dy - w * b(_channel_sum(dy, axis) / total))
        through_var = b(gain * inverse_std_derivative(var, config) * 2.0 / total * _channel_sum(dy * centered, axis))
        return direct + through_var * w * centered


def parameter_gradients(dy, normalized, config: Config) -> dict:
    """dgamma = sum(dy * normalized) and dbeta = sum(dy), None where scale / center is off."""
    axis = config.channel_axis
    with np.errstate(invalid="ignore", over="ignore"):
        return {"dgamma": _channel_sum(dy * normalized, axis) if config.scale else None,
                "dbeta": _channel_sum(dy, axis) if config.center else None}


def running_gradients(x, dy, mean, var, state: State, config: Config) -> dict:
    """Inference: y is an affine map of x, so dx = g f(v_R) dy."""
    axis, rank = config.channel_axis, x.ndim
    f = broadcast(inverse_std(var, config), rank, axis)
    g = broadcast(state.gamma.astype(np.float64) if config.scale else np.ones_like(mean), rank, axis)
    with np.errstate(invalid="ignore", over="ignore"):
        normalized = (x - broadcast(mean, rank, axis)) * f
        return {"dx": g * f * dy, **parameter_gradients(dy, normalized, config)}


def batch_gradients(x, dy, mean, var, state: State, config: Config, weights=None, correction=None) -> dict:
    """Training: the chain rule through the batch moments; ``correction`` = renorm's (r, d)."""
    axis, rank = config.channel_axis, x.ndim
    gamma = state.gamma.astype(np.float64) if config.scale else np.ones_like(mean)
    r, d = correction if correction is not None else (np.ones_like(mean), np.zeros_like(mean))
    with np.errstate(invalid="ignore", over="ignore"):
        normalized = (x - broadcast(mean, rank, axis)) * broadcast(inverse_std(var, config) * r, rank, axis)
        normalized = normalized + broadcast(d, rank, axis)
    dx = batch_dx(x, dy, mean, var, gamma * r, config, weights)
    return {"dx": dx, **parameter_gradients(dy, normalized, config)}


def ghost_gradients(x, dy, groups, means, variances, state: State, config: Config) -> dict:
    """Each ghost batch by the batch formula; dgamma and dbeta summed over the ghost batches."""
    dx = np.empty_like(x)
    total = {"dgamma": None, "dbeta": None}
    for group, mean, var in zip(groups, means, variances):
        part = batch_gradients(x[group], dy[group], mean, var, state, config)
        dx[group] = part["dx"]
        for key in total:
            if part[key] is not None:
                total[key] = part[key] if total[key] is None else total[key] + part[key]
    return {"dx": dx, **total}
