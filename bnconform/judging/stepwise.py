"""Judging a case one step at a time, each step from the state the case expects before it.

An API that keeps no running statistics between calls (``Adapter.keeps_state = False``:
tf.nn.moments + batch_normalization, batch_norm_with_global_normalization, the Keras backend
functions) cannot run a step that updates them, yet on that step it computes exactly what its
users compute: y, the batch moments and the gradients, from the batch. And its user, who keeps the
running statistics, hands an inference step whatever they hold. So each step i becomes a one-step
case (:func:`step_case`):

* its initial state is the state the case expects before step i: the initial state for step 0,
  else gamma and beta with the running statistics the case file expects after step i - 1;
* it updates nothing (``update_running_stats = False``): its y, batch moments and gradients are
  the original step's, since an update happens after the step normalizes, and the running
  statistics after it are the state it started from;
* its running-statistics rule is the plain EMA, its counter 0: with no update they change no
  result, so they must not make the step inexpressible.

The adapter runs each one-step case; the judge compares every output but the running statistics
(and the counter and renorm state) against the original case, and records those as *not
observed* (:func:`unobserved_outputs`). A step whose one-step case the API cannot express is
left out (also recorded); a cell is unsupported only when no step can run.
"""

from __future__ import annotations

from dataclasses import replace

from ..caseformat.model import RENORM_STATE_KEYS, Case, RunningStats, State, Step

STATE_KEYS = ("running_mean", "running_var", "num_updates", *RENORM_STATE_KEYS)  # what a stateless API never returns


def state_before(case: Case, index: int) -> State:
    """The state the case expects before step ``index``: gamma and beta, and the running
    statistics after the previous step (the initial ones before step 0)."""
    initial = case.initial_state
    if index == 0:
        return initial.copy()
    after = case.steps[index - 1].expected
    renorm = {k: None if after.get(k) is None else after[k].copy() for k in RENORM_STATE_KEYS}
    return State(initial.gamma.copy(), initial.beta.copy(), after["running_mean"].copy(), after["running_var"].copy(),
                 int(after.get("num_updates") or 0), **renorm)


def step_case(case: Case, index: int, keep_update: bool = False) -> Case:
    """Step ``index`` of ``case`` as a case of its own that starts from :func:`state_before`.
    Without ``keep_update`` (an API without state) it updates nothing (module docstring) and its
    expected running statistics are the state it starts from. With it (a stateful API run from the
    expected state, ``--stepwise``) it is the original step, counter and conventions included."""
    step = case.steps[index]
    if keep_update:
        one = replace(step, expected=dict(step.expected), tolerance=dict(step.tolerance))
        return Case(f"{case.id}#step{index}", case.family, case.description, case.config, state_before(case, index),
                    [one], case.path)
    state = replace(state_before(case, index), num_updates=0)
    expected = dict(step.expected)
    expected.update(running_mean=state.running_mean, running_var=state.running_var, num_updates=0)
    plain = replace(case.config, running_stats=RunningStats(decay=case.config.running_stats.decay or 0.9,
                                                            variance=case.config.running_stats.variance))
    one = Step(step.normalize_with, False, step.x, expected, dict(step.tolerance), sample_weights=step.sample_weights,
               dy=step.dy, replica_sizes=step.replica_sizes)
    return Case(f"{case.id}#step{index}", case.family, case.description, plain, state, [one], case.path)


def step_cases(case: Case, keep_update: bool = False) -> list[Case]:
    """Every step of ``case`` as :func:`step_case`."""
    return [step_case(case, i, keep_update) for i in range(len(case.steps))]


def not_resumable(one: Case) -> str | None:
    """Why a one-step case that keeps its update cannot stand for its step: the canonical state
    before it does not carry what the step needs (zero-debias accumulators, a renorm stddev
    history), seen as the oracle failing to reproduce the step's expected results from it."""
    from ..reference.oracle import run_case
    from .compare import compare_case

    if compare_case(one, run_case(one))[0]:
        return "the state before this step is not all in the case's canonical state (e.g. zero-debias accumulators)"
    return None


def step_reasons(reason_of, case: Case) -> list[str | None]:
    """Per step, why ``reason_of`` (case -> reason or None) refuses its one-step case (None: it
    can run). A step that cannot run is left out and the cell judged on the others."""
    return [reason_of(one) for one in step_cases(case)]


def settle(reasons: list) -> tuple[str | None, list[int]]:
    """(the cell's unsupported reason when no step can run, nothing being observable: the first
    step's, as "step 0: <reason>" in a case of several steps; else None, the steps left out)."""
    if all(reasons):
        return (reasons[0] if len(reasons) == 1 else f"step 0: {reasons[0]}"), []
    return None, [index for index, reason in enumerate(reasons) if reason]


def unsupported_step(reason_of, case: Case) -> str | None:
    """:func:`settle`'s reason for the one-step cases ``reason_of`` (case -> reason or None) judges."""
    return settle(step_reasons(reason_of, case))[0]


def observed_results(results: list) -> list:
    """The one-step results without the state keys a stateless API cannot report (None: a step
    left out)."""
    return [None if step is None else {k: v for k, v in step.items() if k not in STATE_KEYS} for step in results]


def unobserved_outputs(case: Case, skipped=()) -> list[str]:
    """What the cell could not observe: the state outputs the case expects (a stateless API reports
    none), then "step i" for each step left out, in a fixed order."""
    expected = {k for step in case.steps for k, v in step.expected.items() if v is not None}
    return [k for k in STATE_KEYS if k in expected] + [f"step {i}" for i in skipped]
