"""The oracle's gradients, checked without its backward formulas: float64 finite differences of
the forward oracle on every gradients case, and small examples derived by hand."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bnconform.reference import oracle
from bnconform.execution.plan import discover_cases
from bnconform.caseformat.model import Config, Renorm, State, Step

CASES = discover_cases(Path(__file__).resolve().parents[1] / "cases", ["gradients"])
STENCIL = ((-2, 1 / 12), (-1, -8 / 12), (1, 8 / 12), (2, -1 / 12))  # 4th-order central difference


def _loss(case, index: int, x, gamma, beta, correction) -> float:
    """sum(dy * y) of step ``index`` from the forward oracle, with x / gamma / beta replaced.

    Renorm's r and d are constants in the model's backward, so they are held at ``correction``
    (their values at the unperturbed point) by normalizing directly with oracle.normalize.
    """
    step = case.steps[index]
    state = replace(case.initial_state.copy(), gamma=gamma, beta=beta)
    if correction is not None:
        mean, var = oracle.batch_moments(x, case.config.channel_axis)
        y = oracle.normalize(x, mean, var, state, case.config, correction)
    else:
        steps = [replace(s, dy=None) for s in case.steps[:index]] + [replace(step, x=x, dy=None)]
        y = oracle.run_steps(case.config, state, steps)[index]["y"]
    return float((np.asarray(step.dy, np.float64) * y).sum())


def _renorm_correction(case, index: int):
    if case.config.renorm is None:
        return None
    assert index == 0, "renorm cases of this family have one step"
    x = case.steps[0].x.astype(np.float64)
    mean, var = oracle.batch_moments(x, case.config.channel_axis)
    running = oracle._RunningState(case.initial_state, case.config)
    return oracle.renorm_correction(mean, var, running, case.config)


def _finite_difference(f, point: np.ndarray, h: float) -> np.ndarray:
    grad = np.zeros_like(point)
    for i in np.ndindex(point.shape):
        for offset, weight in STENCIL:
            moved = point.copy()
            moved[i] += offset * h
            grad[i] += weight * f(moved) / h
    return grad


def _numeric_gradients(case, index: int) -> dict:
    step, state = case.steps[index], case.initial_state
    x, g, b = step.x.astype(np.float64), state.gamma.astype(np.float64), state.beta.astype(np.float64)
    fix = _renorm_correction(case, index)
    h = 1e-3 * max(float(np.std(x)), 1e-3)  # relative to the spread: the function varies on that scale
    return {"dx": _finite_difference(lambda v: _loss(case, index, v, g, b, fix), x, h),
            "dgamma": _finite_difference(lambda v: _loss(case, index, x, v, b, fix), g, 1e-4),
            "dbeta": _finite_difference(lambda v: _loss(case, index, x, g, v, fix), b, 1e-4)}


def _term_size(case, index: int, key: str) -> float:
    """How large the summands of a gradient are: max|gamma| max|dy| / min sigma for dx (training dx
    cancels such terms), max_c sum|dy| for dgamma (|xhat| is O(1)) and dbeta."""
    step, config = case.steps[index], case.config
    dy = np.abs(step.dy.astype(np.float64))
    if key != "dx":
        return float(dy.sum(axis=oracle.reduction_axes(dy.ndim, config.channel_axis)).max())
    var = step.expected["batch_var"] if step.expected["batch_var"] is not None else np.zeros(1)
    if not step.is_training:  # the running variance before this step
        var = case.initial_state.running_var if index == 0 else case.steps[index - 1].expected["running_var"]
    sigma = float(np.sqrt(np.min(var) + config.effective_epsilon)) or 1.0
    gamma = float(np.abs(case.initial_state.gamma).max()) if config.scale else 1.0
    return gamma * float(dy.max()) / sigma


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_oracle_gradients_match_finite_differences(case):
    """Relative error <= 1e-7: |finite difference - oracle| over the larger of the result and the
    size of its summands (_term_size), since dx = 0 by cancellation is a valid training answer."""
    results = oracle.run_case(case)
    for index, (step, result) in enumerate(zip(case.steps, results)):
        if step.x.size == 0:  # nothing to perturb: dx is empty, dgamma and dbeta are sums over no element
            assert result["dx"].size == 0 and not np.any(result["dgamma"]) and not np.any(result["dbeta"]), case.id
            continue
        numeric = _numeric_gradients(case, index)
        for key in ("dx", "dgamma", "dbeta"):
            if result[key] is None:
                continue
            # gamma = 0: every term is 0, so the error is taken as absolute (finite differences of a constant are 0)
            reference = max(float(np.abs(result[key]).max()), _term_size(case, index, key)) or 1.0
            error = float(np.abs(numeric[key] - result[key]).max()) / reference
            assert error <= 1e-7, f"{case.id} step {index} {key}: relative error {error:.3g} against finite differences"


def _one_step(config, x, dy, mode="batch", **state):
    x = np.asarray(x, np.float64)
    c = x.shape[config.channel_axis]
    defaults = {"gamma": np.ones(c), "beta": np.zeros(c), "running_mean": np.zeros(c), "running_var": np.ones(c)}
    defaults.update({k: np.asarray(v, np.float64) for k, v in state.items()})
    return oracle.run_steps(config, State(**defaults), [Step(mode, False, np.asarray(x, float), dy=np.asarray(dy, float))])[0]


def test_two_samples_by_hand():
    """x = [3, 1], eps = 3: t = (a - b) / 2 = 1, y1 = gamma t / sqrt(t^2 + eps) + beta = -y2 + 2 beta.
    dL/da = (p - q) gamma eps / (2 (t^2 + eps)^1.5) = 2 * 1.5 * 3 / (2 * 8) = 0.5625 = -dL/db;
    dgamma = p xhat1 + q xhat2 = 2 * 0.5 = 1; dbeta = p + q = 2."""
    out = _one_step(Config(channel_axis=1, epsilon=3.0), [[3.0], [1.0]], [[2.0], [0.0]], gamma=[1.5], beta=[0.25])
    np.testing.assert_allclose(out["dx"].ravel(), [0.5625, -0.5625], rtol=1e-15)
    np.testing.assert_allclose(out["dgamma"], [1.0], rtol=1e-15)
    np.testing.assert_allclose(out["dbeta"], [2.0], rtol=1e-15)


def test_inference_is_an_affine_map_by_hand():
    """running mean 0.5, var 3, eps 1: f = 1/2; gamma 4: dx = 2 dy = [2, 6];
    dgamma = 1 * 0.5 * 0.5 + 3 * 1.5 * 0.5 = 2.5; dbeta = 4."""
    out = _one_step(Config(channel_axis=1, epsilon=1.0), [[1.0], [2.0]], [[1.0], [3.0]], "running",
                    gamma=[4.0], running_mean=[0.5], running_var=[3.0])
    np.testing.assert_allclose(out["dx"].ravel(), [2.0, 6.0], rtol=1e-15)
    np.testing.assert_allclose(out["dgamma"], [2.5], rtol=1e-15)
    np.testing.assert_allclose(out["dbeta"], [4.0], rtol=1e-15)


def test_all_ones_upstream_gives_zero_dx_in_training():
    """sum(y) = N beta whatever x is, so its gradient is 0 (up to float64 rounding)."""
    x = np.arange(12.0).reshape(4, 3) ** 1.5
    out = _one_step(Config(channel_axis=1), x, np.ones_like(x), gamma=[2.0, -1.0, 0.5])
    assert np.abs(out["dx"]).max() < 1e-13
    np.testing.assert_allclose(out["dbeta"], [4.0, 4.0, 4.0], rtol=1e-15)


def test_one_sample_and_constant_channel():
    """N = 1: y = beta, so dx = 0 and dgamma = 0. Constant channel with eps: xhat = 0, so dgamma = 0
    and dx = gamma (dy - mean dy) / sqrt(eps): dy = [1, 3] gives [-1, 1] * 2 / 0.5 = [-4, 4]."""
    one = _one_step(Config(channel_axis=1), [[5.0, -2.0]], [[0.7, 0.3]])
    assert np.all(one["dx"] == 0.0) and np.all(one["dgamma"] == 0.0)
    const = _one_step(Config(channel_axis=1, epsilon=0.25), [[7.0], [7.0]], [[1.0], [3.0]], gamma=[2.0])
    np.testing.assert_allclose(const["dx"].ravel(), [-4.0, 4.0], rtol=1e-15)
    assert const["dgamma"][0] == 0.0


def test_renorm_r_and_d_are_constants_by_hand():
    """x = [3, 1] (mu 2, var 1), eps 0 (floor 0): renorm stats m_R = 0, s_R = 2, rmax = 0.25 clips
    r = sigma_B / s_R = 0.5 to 0.25; d = (2 - 0) / 2 = 1 (dmax None). dy = [1, 0]:
    dgamma = sum dy (xhat r + d) = 1 * 0.25 + 1 = 1.25; dx = r * BN's dx = 0.25 * [0, 0] at eps = 0
    (two samples normalize to +-1 whatever x is)."""
    config = Config(channel_axis=1, epsilon=0.0, renorm=Renorm(rmax=0.25))
    out = _one_step(config, [[3.0], [1.0]], [[1.0], [0.0]], renorm_mean=[0.0], renorm_stddev=[2.0],
                    running_stddev=[1.0])
    np.testing.assert_allclose(out["dgamma"], [1.25], rtol=1e-15)
    np.testing.assert_allclose(out["dx"].ravel(), [0.0, 0.0], atol=1e-15)
