"""The oracle's extensions (renorm, ghost batches, sample weights) against hand arithmetic.

Every expected number below is worked out in the comments from the formulas in
bnconform/caseformat/model.py; none comes from the oracle itself. Inputs are float64 and epsilon is
chosen so that square roots come out exact.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bnconform.reference import oracle
from bnconform.adapters.base import Adapter
from bnconform.judging.capabilities import Capabilities
from bnconform.adapters.numpy_oracle import OracleAdapter
from bnconform.caseformat.casefile import case_to_json, dumps_case
from bnconform.judging.judge import judge
from bnconform.caseformat.model import Config, Renorm, RunningStats, State, Step
from bnconform.caseformat.validation import CaseError, check_meaning, load_case

CASES = Path(__file__).resolve().parent.parent / "cases"
F64 = dict(input_dtype="float64", param_dtype="float64")


def column(*values) -> np.ndarray:
    """A (B, 1) float64 input: one channel, one value per sample."""
    return np.array(values, dtype=np.float64).reshape(-1, 1)


def state(gamma=1.0, beta=0.0, mean=0.0, var=1.0, **renorm) -> State:
    one = lambda v: np.array([v], dtype=np.float64)  # noqa: E731
    return State(one(gamma), one(beta), one(mean), one(var), 0, **{k: one(v) for k, v in renorm.items()})


def train(x, weights=None) -> Step:
    return Step("batch", True, x, sample_weights=weights)


# --- weighted moments ---------------------------------------------------------------------

def test_weighted_moments_two_samples():
    # w = (1, 3): mean = (1*1 + 3*3) / 4 = 2.5; var = (1*1.5^2 + 3*0.5^2) / 4 = 3 / 4
    mean, var = oracle.weighted_moments(column(1, 3), np.array([1.0, 3.0]), 1)
    np.testing.assert_allclose([mean[0], var[0]], [2.5, 0.75], rtol=1e-15)


def test_weighted_moments_broadcast_over_spatial_positions():
    # x[0] = (0, 2), x[1] = (4, 4) along L; w = (1, 2) counts once per position:
    # W = 1*2 + 2*2 = 6, sum(w x) = 1*2 + 2*8 = 18 -> mean 3
    # sum(w (x-3)^2) = 1*(9 + 1) + 2*(1 + 1) = 14 -> var 14/6
    x = np.array([[[0.0, 2.0]], [[4.0, 4.0]]])
    mean, var = oracle.weighted_moments(x, np.array([1.0, 2.0]), 1)
    np.testing.assert_allclose([mean[0], var[0]], [3.0, 14 / 6], rtol=1e-15)


def test_zero_weight_sample_is_excluded_but_normalized():
    # w = (1, 0, 1): moments of (1, 3) only: mean 2, var 1; with eps 0, gamma 1, beta 0 the
    # excluded sample 100 still normalizes to (100 - 2) / 1 = 98.
    config = Config(channel_axis=1, epsilon=0.0, running_stats=RunningStats(decay=0.5, variance="biased"), **F64)
    result = oracle.run_steps(config, state(), [train(column(1, 100, 3), np.array([1.0, 0.0, 1.0]))])[0]
    np.testing.assert_allclose(result["y"].ravel(), [-1.0, 98.0, 1.0], rtol=1e-15)
    # running: mean 0.5*0 + 0.5*2 = 1; var 0.5*1 + 0.5*1 = 1 (the weighted moments, biased)
    np.testing.assert_allclose([result["batch_mean"][0], result["running_mean"][0], result["running_var"][0]],
                               [2.0, 1.0, 1.0], rtol=1e-15)


# --- ghost batches ------------------------------------------------------------------------

def test_ghost_indices_contiguous_and_interleaved():
    contiguous = oracle.ghost_indices(6, 2, "contiguous")
    interleaved = oracle.ghost_indices(6, 2, "interleaved")  # G = 3 groups, stride 3
    assert [g.tolist() for g in contiguous] == [[0, 1], [2, 3], [4, 5]]
    assert [g.tolist() for g in interleaved] == [[0, 3], [1, 4], [2, 5]]


def ghost_config(split="contiguous", variance="biased") -> Config:
    return Config(channel_axis=1, epsilon=0.0, running_stats=RunningStats(decay=0.5, variance=variance),
                  virtual_batch_size=2, ghost_split=split, **F64)


def test_ghost_contiguous_normalizes_each_pair():
    # groups {0, 2}: mean 1, var 1 -> (-1, 1); {10, 14}: mean 12, var 4 (sigma 2) -> (-1, 1)
    result = oracle.run_steps(ghost_config(), state(), [train(column(0, 2, 10, 14))])[0]
    np.testing.assert_allclose(result["y"].ravel(), [-1.0, 1.0, -1.0, 1.0], rtol=1e-15)
    assert result["batch_mean"] is None and result["batch_var"] is None
    # update sees mean of means (1 + 12) / 2 = 6.5, mean of vars (1 + 4) / 2 = 2.5:
    # running_mean = 0.5*0 + 0.5*6.5 = 3.25, running_var = 0.5*1 + 0.5*2.5 = 1.75
    np.testing.assert_allclose([result["running_mean"][0], result["running_var"][0]], [3.25, 1.75], rtol=1e-15)


def test_ghost_interleaved_pairs_every_second_sample():
    # groups {0, 10}: mean 5, sigma 5 -> (-1, 1); {2, 14}: mean 8, sigma 6 -> (-1, 1)
    # in sample order: 0 -> -1, 2 -> -1, 10 -> 1, 14 -> 1
    result = oracle.run_steps(ghost_config("interleaved"), state(), [train(column(0, 2, 10, 14))])[0]
    np.testing.assert_allclose(result["y"].ravel(), [-1.0, -1.0, 1.0, 1.0], rtol=1e-15)
    # mean of vars (25 + 36) / 2 = 30.5 -> running_var = 0.5 + 15.25 = 15.75
    np.testing.assert_allclose(result["running_var"][0], 15.75, rtol=1e-15)


def test_ghost_bessel_uses_the_ghost_batch_count():
    # M = 2 elements per ghost batch: factor 2/1, so 2.5 -> 5 and running_var = 0.5 + 2.5 = 3
    result = oracle.run_steps(ghost_config(variance="bessel"), state(), [train(column(0, 2, 10, 14))])[0]
    np.testing.assert_allclose(result["running_var"][0], 3.0, rtol=1e-15)


def test_ghost_eval_step_uses_running_stats_for_any_batch_size():
    # running mean 1, var 4 (sigma 2): x = (1, 3, 5) -> (0, 1, 2); 3 is not a multiple of 2
    eval_step = Step("running", False, column(1, 3, 5))
    result = oracle.run_steps(ghost_config(), state(mean=1.0, var=4.0), [eval_step])[0]
    np.testing.assert_allclose(result["y"].ravel(), [0.0, 1.0, 2.0], rtol=1e-15)


# --- batch renormalization ----------------------------------------------------------------

def renorm_config(eps=0.0, renorm_decay=0.5, decay=0.75, **bounds) -> Config:
    return Config(channel_axis=1, epsilon=eps, running_stats=RunningStats(decay=decay, variance="biased"),
                  renorm=Renorm(decay=renorm_decay, **bounds), **F64)


RENORM_STATE = dict(gamma=2.0, beta=0.5, mean=0.0, var=1.0, renorm_mean=1.0, renorm_stddev=1.0, running_stddev=1.0)


@pytest.mark.parametrize("bounds, expected_y", [
    # x = (0, 4): mu_B 2, sigma_B 2, xhat = (-1, 1); s_R 1, m_R 1 -> r = 2, d = 1
    ({}, [-1.5, 6.5]),                         # 2 * (-2 + 1) + 0.5, 2 * (2 + 1) + 0.5
    ({"rmax": 1.5, "dmax": 0.5}, [-1.5, 4.5]),  # r 1.5, d 0.5: 2 * (-1) + 0.5, 2 * 2 + 0.5
    ({"rmin": 3.0}, [-3.5, 8.5]),              # r 3, d 1: 2 * (-2) + 0.5, 2 * 4 + 0.5
])
def test_renorm_forward(bounds, expected_y):
    result = oracle.run_steps(renorm_config(**bounds), state(**RENORM_STATE), [train(column(0, 4))])[0]
    np.testing.assert_allclose(result["y"].ravel(), expected_y, rtol=1e-15)


def test_renorm_updates_after_normalizing():
    result = oracle.run_steps(renorm_config(), state(**RENORM_STATE), [train(column(0, 4))])[0]
    # renorm decay 0.5: m_R = 0.5*1 + 0.5*2 = 1.5, s_R = 0.5*1 + 0.5*2 = 1.5
    # decay 0.75: running_mean = 0.25*2 = 0.5; S = 0.75*1 + 0.25*sqrt(4 + 0) = 1.25, var = S^2 = 1.5625
    got = [result[k][0] for k in ("renorm_mean", "renorm_stddev", "running_mean", "running_stddev", "running_var")]
    np.testing.assert_allclose(got, [1.5, 1.5, 0.5, 1.25, 1.5625], rtol=1e-15)
    assert result["num_updates"] == 1


def test_renorm_second_step_uses_updated_renorm_stats():
    # step 2 with x = (0, 4) again: s_R = 1.5, m_R = 1.5 -> r = 2 / 1.5, d = 0.5 / 1.5
    # y = 2 * (xhat * 4/3 + 1/3) + 0.5 = (2 * (-1) + 0.5, 2 * 5/3 + 0.5) = (-1.5, 10/3 + 0.5)
    steps = [train(column(0, 4)), train(column(0, 4))]
    result = oracle.run_steps(renorm_config(), state(**RENORM_STATE), steps)[1]
    np.testing.assert_allclose(result["y"].ravel(), [-1.5, 10 / 3 + 0.5], rtol=1e-14)


def test_renorm_guard_and_epsilon_in_running_var():
    # x = (-1.2, 1.2): v_B 1.44, eps 0.25 -> sigma_B 1.3; s_R 0.1 < sqrt(eps) = 0.5 -> divide by 0.5:
    # r = 2.6, d = (0 - 0.5) / 0.5 = -1; y = +-1.2/1.3 * 2.6 - 1 = (-3.4, 1.4) with gamma 1, beta 0
    initial = state(renorm_mean=0.5, renorm_stddev=0.1, running_stddev=1.3, var=0.0)
    result = oracle.run_steps(renorm_config(eps=0.25, decay=0.5), initial, [train(column(-1.2, 1.2))])[0]
    np.testing.assert_allclose(result["y"].ravel(), [-3.4, 1.4], rtol=1e-14)
    # S = 0.5*1.3 + 0.5*sqrt(1.44 + 0.25) = 1.3 -> running_var = 1.69 - 0.25 = 1.44 (an EMA of the
    # variance from 0 would give 0.72)
    np.testing.assert_allclose(result["running_var"][0], 1.44, rtol=1e-14)


def test_renorm_eval_and_no_update_steps():
    eval_step = Step("running", False, column(2.0))
    no_update = Step("batch", False, column(0, 4))
    results = oracle.run_steps(renorm_config(), state(**RENORM_STATE), [eval_step, no_update])
    # eval: running mean 0, var 1, no correction: y = 2 * 2 + 0.5 = 4.5
    np.testing.assert_allclose(results[0]["y"].ravel(), [4.5], rtol=1e-15)
    # no update: r = 2, d = 1 as in the first test, and every statistic stays where it was
    np.testing.assert_allclose(results[1]["y"].ravel(), [-1.5, 6.5], rtol=1e-15)
    assert [results[1][k][0] for k in ("renorm_mean", "renorm_stddev", "running_stddev")] == [1.0, 1.0, 1.0]
    assert results[1]["num_updates"] == 0


# --- case files, validation and the judge ---------------------------------------------------

def test_extension_case_files_round_trip_byte_for_byte():
    for family in ("renorm", "ghost", "weighted"):
        path = sorted((CASES / family).glob("*.json"))[0]
        assert dumps_case(load_case(path)) == path.read_text(encoding="utf-8")


def test_plain_cases_carry_no_extension_fields():
    case = load_case(CASES / "momentum" / "decay_0.9_bessel_3steps.json")
    obj = case_to_json(case)
    assert case.extensions == ()
    assert not {"renorm", "virtual_batch_size", "ghost_split"} & obj["config"].keys()
    assert "renorm_mean" not in obj["initial_state"] and "sample_weights" not in obj["steps"][0]


@pytest.mark.parametrize("family, extension", [("renorm", "renorm"), ("ghost", "virtual_batch_size"),
                                               ("weighted", "sample_weights")])
def test_judge_marks_unhandled_extension_unsupported(family, extension):
    case = load_case(sorted((CASES / family).glob("*.json"))[0])
    assert case.extensions == (extension,)

    class Plain(Adapter):
        name = "plain"

        def run(self, case, device):  # pragma: no cover - must not be reached
            raise AssertionError("run() called for a case with an unhandled extension")

    verdict = judge(Plain(), case, "cpu")
    assert verdict.status == "unsupported"
    assert verdict.detail == f"plain cannot express these model extensions. Expected: []. Received: ['{extension}']"

    class Extended(Plain):
        capabilities = Capabilities(extensions=frozenset({extension}))

    reached = judge(Extended(), case, "cpu")  # declared, so run() is reached
    assert reached.status == "error" and "unhandled extension" in reached.detail
    assert judge(OracleAdapter(), case, "cpu").status == "pass"


def _broken(path: str, change) -> None:
    case = load_case(CASES / path)
    change(case)
    with pytest.raises(CaseError):
        check_meaning(case)


def test_validation_rejects_inconsistent_extension_knobs():
    weighted = "weighted/fractional_weights_3steps.json"
    _broken(weighted, lambda c: setattr(c, "config", c.config.with_running(variance="bessel")))
    _broken(weighted, lambda c: setattr(c.steps[-1], "sample_weights", np.ones(6, np.float32)))  # eval step
    _broken(weighted, lambda c: setattr(c.steps[0], "sample_weights", -c.steps[0].sample_weights))
    _broken(weighted, lambda c: setattr(c, "config", replace(c.config, virtual_batch_size=2)))  # two extensions
    _broken("ghost/contiguous_vbs2_b8.json", lambda c: setattr(c, "config", replace(c.config, virtual_batch_size=3)))
    _broken("renorm/unclipped_3steps.json", lambda c: setattr(c.initial_state, "renorm_stddev", None))
    outside = lambda c: setattr(c, "config", replace(c.config, epsilon_mode="add_outside_sqrt"))  # noqa: E731
    _broken("renorm/unclipped_3steps.json", outside)
