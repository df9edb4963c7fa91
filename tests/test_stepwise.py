"""An API without running state (``keeps_state = False``) is judged step by step from the state the
case expects (bnconform.judging.stepwise): on every step it can express, on every output but the
running statistics, which its verdict lists as not observed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from bnconform.adapters.numpy_oracle import OracleAdapter
from bnconform.caseformat.validation import load_case
from bnconform.execution import plan
from bnconform.execution.plan import Cell, discover_cases, presettle
from bnconform.judging.judge import judge
from bnconform.judging.stepwise import state_before, step_case
from bnconform.reference import oracle

CASES = Path(__file__).resolve().parents[1] / "cases"
THREE_UPDATES_THEN_EVAL = CASES / "momentum" / "decay_0.9_bessel_3steps.json"  # batch+update x 3, then running


class Stateless(OracleAdapter):
    """The oracle behind a tf.nn-style API: no step that updates, no state kept between calls."""

    name = "test.stateless"
    keeps_state = False
    capabilities = replace(OracleAdapter.capabilities, step_kinds=frozenset({("batch", False), ("running", False)}))


class EvalOnly(Stateless):
    """batch_norm_with_global_normalization-style: it normalizes only with statistics it is given."""

    name = "test.eval_only"
    capabilities = replace(OracleAdapter.capabilities, step_kinds=frozenset({("running", False)}))


class WrongInference(Stateless):
    """Adds 0.1 to y wherever it normalizes with the running statistics."""

    name = "test.wrong_inference"

    def run(self, case, device):
        results = oracle.run_case(case)
        for step, result in zip(case.steps, results):
            if step.normalize_with == "running":
                result["y"] = result["y"] + 0.1
        return results


def test_each_step_starts_from_the_state_the_case_expects_and_updates_nothing():
    case = load_case(THREE_UPDATES_THEN_EVAL)
    assert np.array_equal(state_before(case, 0).running_mean, case.initial_state.running_mean)
    one = step_case(case, 3)
    assert np.array_equal(one.initial_state.running_var, case.steps[2].expected["running_var"])
    assert one.steps[0].update_running_stats is False and one.initial_state.num_updates == 0
    np.testing.assert_array_equal(oracle.run_case(one)[0]["y"], case.steps[3].expected["y"])


def test_a_stateless_api_is_judged_on_update_and_eval_steps_without_its_running_statistics():
    case = load_case(THREE_UPDATES_THEN_EVAL)
    verdict = judge(Stateless(), case, "cpu")
    assert verdict.status == "pass", verdict.detail
    assert verdict.unobserved == ["running_mean", "running_var", "num_updates"]
    assert {"y", "batch_mean", "batch_var"} <= set(verdict.compared) and "running_mean" not in verdict.compared
    assert "not observed: running_mean, running_var, num_updates" in verdict.detail


def test_a_wrong_inference_after_updates_fails_at_that_step():
    verdict = judge(WrongInference(), load_case(THREE_UPDATES_THEN_EVAL), "cpu")
    assert verdict.status == "fail" and verdict.detail.startswith("step 3: y"), verdict.detail


def test_steps_it_cannot_express_are_left_out_and_named():
    verdict = judge(EvalOnly(), load_case(THREE_UPDATES_THEN_EVAL), "cpu")
    assert verdict.status == "pass", verdict.detail
    assert verdict.unobserved[-3:] == ["step 0", "step 1", "step 2"] and verdict.compared == ["y"]


def test_a_cell_with_nothing_observable_stays_unsupported_in_the_planner_and_the_judge(monkeypatch):
    case = load_case(CASES / "formulas" / "rank2_nc_train.json")  # one training step
    verdict = judge(EvalOnly(), case, "cpu")
    assert verdict.status == "unsupported" and "step kinds" in verdict.detail
    monkeypatch.setattr(plan, "adapter_class", lambda name: EvalOnly)
    settled = presettle(Cell(str(case.path), case.id, case.family, EvalOnly.name, "cpu"), case)
    assert settled is not None and settled.status == "unsupported" and settled.detail == verdict.detail


class DriftsAtStepOne(OracleAdapter):
    """A stateful API whose second update adds 0.5 to the running mean (the error then travels)."""

    name = "test.drifts_at_step_one"

    def run(self, case, device):
        results = oracle.run_case(case)
        if "#step" in case.id and not case.id.endswith("#step1"):
            return results  # run from the expected state, another step: right
        start = 0 if "#step" not in case.id else 1
        for index, result in enumerate(results, start):
            if index >= 1:
                result["running_mean"] = result["running_mean"] + 0.5
        return results


def test_a_stateful_api_run_stepwise_names_the_first_step_that_diverges_only():
    case = load_case(THREE_UPDATES_THEN_EVAL)
    whole = judge(DriftsAtStepOne(), case, "cpu")
    steps = judge(DriftsAtStepOne(), case, "cpu", stepwise=True)
    assert whole.status == "fail" and {m["step"] for m in whole.mismatches} == {1, 2, 3}
    assert steps.status == "fail" and {m["step"] for m in steps.mismatches} == {1}
    assert "running_mean" in steps.compared and steps.unobserved == []


def test_stepwise_leaves_out_steps_whose_state_the_case_cannot_carry():
    """A zero-debiased EMA's accumulators are not in the canonical state: after the first update
    such a step cannot be started from the case's state, and is named, not failed."""
    zero_debias = [c for c in discover_cases(CASES) if c.config.running_stats.zero_debias and len(c.steps) > 2]
    verdict = judge(OracleAdapter(), zero_debias[0], "cpu", stepwise=True)
    assert verdict.status == "pass" and any(u.startswith("step ") for u in verdict.unobserved), verdict
