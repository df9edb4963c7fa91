"""Per-element error bounds (bnconform.reference.bounds): each element is judged by its own
group's terms, not the worst element's; a bias inside every bound still fails a reduction; and
the oracle's own float64 error stays far inside every bound.

Expected values are derived here by a second formulation (NumPy written out in the test, or
extended precision), never by calling the bounds module for the number it is checked against.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bnconform.caseformat.dtypes import machine_epsilon
from bnconform.caseformat.validation import load_case
from bnconform.execution.plan import discover_cases
from bnconform.judging.compare import output_mismatch
from bnconform.reference.bounds import element_bound

CASES = Path(__file__).resolve().parents[1] / "cases"


def test_a_constant_channel_no_longer_loosens_the_others():
    """degenerate/large_constant_channel: channel 1 is a constant 1.00001e4 (sigma = sqrt(eps));
    the stored y atol (4.4) came from it. Elements of channels 0 and 2 get
    r|e_i| + ulp(e_i) + r(|g_c| |x_i - mu_c| / sigma_c + |b_c|) + u|g_c||mu_c|/sigma_c."""
    case = load_case(CASES / "degenerate" / "large_constant_channel.json")
    step = case.steps[0]
    x, e = np.asarray(step.x, np.float64), np.asarray(step.expected["y"])
    r, u = 256 * machine_epsilon("float32"), 8 * machine_epsilon("float32")
    bound = element_bound(case, 0, "y", e, step.tolerance["y"])
    for c in (0, 2):
        mean, sigma = x[:, c].mean(), np.sqrt(x[:, c].var() + 1e-5)
        g, b = abs(case.initial_state.gamma[c]), abs(case.initial_state.beta[c])
        ulp = np.spacing(np.abs(e[:, c]).astype(np.float32)).astype(np.float64)  # the last rounding to float32
        by_hand = r * np.abs(e[:, c]) + ulp + r * (g * np.abs(x[:, c] - mean) / sigma + b) + u * g * abs(mean) / sigma
        np.testing.assert_allclose(bound[:, c], by_hand, rtol=1e-12)
        assert bound[:, c].max() < 1e-3 < step.tolerance["y"]["atol"]
    # the constant channel (y = beta = 0.608 everywhere): u |g| |mu| / sqrt(eps) = 4.4 is capped at
    # |gamma| = 1.457 (|x - mu_hat| / sigma_hat < 1 there)
    beta = abs(case.initial_state.beta[1])
    by_hand = 2 * r * beta + float(np.spacing(np.float32(beta))) + abs(case.initial_state.gamma[1])
    assert bound[:, 1].max() == pytest.approx(by_hand, rel=1e-6)
    assert bound.max() < np.abs(e).max()


def test_an_error_the_stored_atol_admitted_now_fails_on_its_own_channel():
    case = load_case(CASES / "degenerate" / "large_constant_channel.json")
    got = np.array(case.steps[0].expected["y"], copy=True)
    got[3, 0] += 0.5  # inside the stored atol of 4.4
    found = output_mismatch(case, 0, "y", got)
    assert found is not None and found.index == [3, 0] and found.reason == "outside tolerance"


def test_a_bias_inside_every_bound_fails_a_reduction_but_mixed_signs_do_not():
    case = load_case(CASES / "formulas" / "float64_nchw_train.json")
    e = np.asarray(case.steps[0].expected["batch_var"])
    bound = element_bound(case, 0, "batch_var", e, case.steps[0].tolerance["batch_var"])
    one_way = output_mismatch(case, 0, "batch_var", e + 0.6 * bound)
    assert one_way is not None and one_way.reason.startswith("systematic bias: the errors average +0.60")
    signs = np.where(np.arange(e.size) % 2 == 0, 1.0, -1.0).reshape(e.shape)
    assert output_mismatch(case, 0, "batch_var", e + 0.45 * bound * signs) is None
    assert output_mismatch(case, 0, "batch_var", e + 0.4 * bound) is None


def test_errors_near_their_bounds_throughout_fail_a_reduction_even_without_bias():
    """Alternating +-0.8 of each bound: the mean stays within 0.5, the root mean square (0.8) does not."""
    case = load_case(CASES / "formulas" / "float64_nchw_train.json")
    e = np.asarray(case.steps[0].expected["batch_mean"])
    bound = element_bound(case, 0, "batch_mean", e, case.steps[0].tolerance["batch_mean"])
    signs = np.where(np.arange(e.size) % 2 == 0, 1.0, -1.0).reshape(e.shape)
    found = output_mismatch(case, 0, "batch_mean", e + 0.8 * bound * signs)
    assert found is not None and found.reason.startswith("errors too large throughout: their root mean square is 0.80")
    assert output_mismatch(case, 0, "batch_mean", e + 0.45 * bound * signs) is None


def _second_formulation(case, step):
    """y, batch mean and biased variance in extended precision (np.longdouble), written out."""
    config = case.config
    x = np.asarray(step.x, np.longdouble)
    axes = tuple(a for a in range(x.ndim) if a != config.channel_axis)
    shape = [1] * x.ndim
    shape[config.channel_axis] = -1
    mean = x.mean(axis=axes)
    var = ((x - mean.reshape(shape)) ** 2).mean(axis=axes)
    eps = np.longdouble(config.effective_epsilon)
    denominator = {"add_inside_sqrt": np.sqrt(var + eps), "add_outside_sqrt": np.sqrt(var) + eps,
                   "max_inside_sqrt": np.sqrt(np.maximum(var, eps))}[config.epsilon_mode]
    gamma = np.asarray(case.initial_state.gamma, np.longdouble) if config.scale else np.ones_like(mean)
    beta = np.asarray(case.initial_state.beta, np.longdouble) if config.center else np.zeros_like(mean)
    y = gamma.reshape(shape) * (x - mean.reshape(shape)) / denominator.reshape(shape) + beta.reshape(shape)
    return {"y": y, "batch_mean": mean, "batch_var": var}


def _plain_training_steps():
    for case in discover_cases(CASES):
        if case.extensions or case.config.epsilon_floor:
            continue
        for index, (step, n) in enumerate(zip(case.steps, case.reduce_counts())):
            if step.normalize_with == "batch" and n > 0:
                yield case, index, step


def test_the_oracles_own_error_stays_far_inside_every_bound():
    """Against extended precision, the float64 expected values use at most a quarter of any
    element's bound (float64 cases: the closest; float32 and half: ~1e9 times inside)."""
    if np.finfo(np.longdouble).eps >= np.finfo(np.float64).eps:
        pytest.skip("np.longdouble is float64 on this platform: no second, wider formulation")
    worst, checked = (0.0, ""), 0
    for case, index, step in _plain_training_steps():
        with np.errstate(all="ignore"):  # empty and overflowing cases give NaN and inf on both sides
            reference = _second_formulation(case, step)
        for key, value in reference.items():
            e = np.asarray(step.expected[key], np.float64)
            finite = np.isfinite(e)
            bound = element_bound(case, index, key, e, step.tolerance[key])
            with np.errstate(all="ignore"):
                used = np.abs(e - np.asarray(value, np.longdouble)).astype(np.float64)[finite] / bound[finite]
            checked += 1
            if used.size and used.max() > worst[0]:
                worst = (float(used.max()), f"{case.id} step {index} {key}")
    print(f"checked {checked} outputs; the closest: {worst[1]} at {worst[0]:.3g} of its bound")
    assert checked > 300 and worst[0] < 0.25, worst


def test_generated_stored_pairs_cover_every_derived_bound():
    """The generator raises each stored atol to the envelope of the derived bounds, so the cap the
    stored pair puts on them never binds on a shipped case (a hand-written case's may)."""
    from bnconform.reference.bounds import DERIVED_KEYS, case_bounds

    binding = []
    for case in discover_cases(CASES):
        for index, step in enumerate(case.steps):
            for key in DERIVED_KEYS:
                stored, e = step.tolerance.get(key), step.expected.get(key)
                derived = None if stored is None or e is None else case_bounds(case)[index].bound(key, np.asarray(e))
                if derived is None:
                    continue
                e = np.asarray(e, np.float64)
                with np.errstate(invalid="ignore"):
                    excess = np.broadcast_to(derived, e.shape) - stored["atol"] - stored["rtol"] * np.abs(e)
                if np.any(excess[np.isfinite(excess)] > 1e-12 * (1 + np.abs(e)[np.isfinite(excess)])):
                    binding.append(f"{case.id} step {index} {key}")
    assert not binding, binding[:10]


def test_a_bessel_slip_of_one_in_2048_is_outside_the_running_variance_bound():
    """After one update with decay 0.9, N/(N-1) for N = 2048 moves a running variance of ~1 by
    0.1 * 1/2047 = 4.9e-5: beyond the update's bound (its batch term is r(float32) wide)."""
    biased = load_case(CASES / "formulas" / "float16_nc_n2048_offset_train_biased.json")
    bessel = load_case(CASES / "formulas" / "float16_nc_n2048_offset_train.json")
    found = output_mismatch(biased, 0, "running_var", bessel.steps[0].expected["running_var"])
    assert found is not None and found.reason == "outside tolerance"
