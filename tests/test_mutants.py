"""Mutation power with margin: every wrong BN of the catalogue (tests/mutants.py) fails at least
MARGIN shipped cases, and, where its defect shows in y, at least MARGIN through y alone.

Mutants are judged in-process (bnconform.judging.judge, the same verdicts a host would give) over the
shipped cases, the families a mutant is written against first, stopping once the margin is met.
"""

from __future__ import annotations

import pytest

import mutants
from bnconform.judging.judge import judge
from mutants import CATALOGUE, MARGIN, STATE_DEFECTS, Mutant, StatelessYOnly, YOnly, shipped_cases


def _ordered(cases, families):
    """The mutant's own families first (most mutants are caught there), then the rest."""
    return sorted(cases, key=lambda c: c.family not in families)


def catches(mutant: Mutant) -> tuple[list[str], list[str], list[str]]:
    """(cases failed, cases failed through y alone, non-pass/fail verdicts), stopping at MARGIN."""
    full, through_y, odd = [], [], []
    seen_through_y = YOnly(mutant)
    for case in _ordered(shipped_cases(), mutant.families):
        if len(full) >= MARGIN and (len(through_y) >= MARGIN or not mutant.in_y):
            break
        verdict = judge(mutant, case, "cpu")
        full += [case.id] if verdict.status == "fail" else []
        odd += [f"{verdict.status}: {case.id}: {verdict.detail}"] if verdict.status not in ("pass", "fail") else []
        if mutant.in_y and len(through_y) < MARGIN:
            status = judge(seen_through_y, case, "cpu").status
            through_y += [case.id] if status == "fail" else []
    return full, through_y, odd


def test_the_catalogue_holds_at_least_30_described_mutants():
    names = [cls.name for cls in CATALOGUE]
    assert len(names) >= 30 and len(set(names)) == len(names)
    long_or_empty = [cls.name for cls in CATALOGUE if not 10 <= len(cls.what) <= 110 or "\n" in cls.what]
    assert long_or_empty == [], f"Expected: a one-line description each. Received none or too long: {long_or_empty}"


@pytest.mark.parametrize("wrong", CATALOGUE, ids=lambda cls: cls.name.removeprefix("mutant."))
def test_mutant_is_caught_with_margin(wrong):
    mutant = wrong()
    full, through_y, odd = catches(mutant)
    assert odd == [], f"{wrong.name} ({wrong.what}): Expected: pass or fail verdicts. Received: {odd[:3]}"
    assert len(full) >= MARGIN, (f"{wrong.name} ({wrong.what}): Expected: caught by >= {MARGIN} cases. "
                                 f"Received: {len(full)} ({full})")
    if wrong.in_y:
        assert len(through_y) >= MARGIN, (f"{wrong.name} ({wrong.what}): Expected: caught through y alone by "
                                          f">= {MARGIN} cases. Received: {len(through_y)} ({through_y})")


def test_a_mutant_that_is_the_oracle_is_caught_by_nothing():
    """The counting itself can fail: an empty defect yields no catch."""
    harmless = mutants.mutant("harmless", "no defect at all", ["formulas"])
    try:
        full, through_y, _ = catches(harmless())
    finally:
        CATALOGUE.remove(harmless)
    assert (full, through_y) == ([], [])


def test_a_ghost_backward_over_the_whole_batch_fails_through_dx():
    """The per-ghost-batch bounds (bnconform.reference.bounds) catch it in dx itself: the old
    whole-output atol of 4.67 let any dx through in gradients/ghost_interleaved_train."""
    wrong = next(cls for cls in CATALOGUE if cls.name == "mutant.ghost_backward_whole_batch")()
    ghost_gradient_cases = [c for c in shipped_cases() if c.family == "gradients" and c.config.virtual_batch_size]
    failed_dx = [c.id for c in ghost_gradient_cases
                 if any(m["output"] == "dx" for m in judge(wrong, c, "cpu").mismatches)]
    assert len(ghost_gradient_cases) >= 3 and set(failed_dx) == {c.id for c in ghost_gradient_cases}, failed_dx


STATELESS_MARGIN = 10


def stateless_catches(mutant: Mutant) -> list[str]:
    """The cases that fail the mutant behind a stateless, y-only API, stopping at STATELESS_MARGIN."""
    caught, seen = [], StatelessYOnly(mutant)
    for case in _ordered(shipped_cases(), mutant.families):
        if len(caught) >= STATELESS_MARGIN:
            break
        caught += [case.id] if judge(seen, case, "cpu").status == "fail" else []
    return caught


FORWARD_DEFECTS = [cls for cls in CATALOGUE if cls.in_y and cls.name not in STATE_DEFECTS]


@pytest.mark.parametrize("wrong", FORWARD_DEFECTS, ids=lambda cls: cls.name.removeprefix("mutant."))
def test_stateless_y_only_variant_is_caught(wrong):
    """Judged step by step from the expected state, through y alone, as tf.nn would be."""
    caught = stateless_catches(wrong())
    assert len(caught) >= STATELESS_MARGIN, (f"{wrong.name} ({wrong.what}) behind a stateless y-only API: Expected: "
                                             f"caught by >= {STATELESS_MARGIN} cases. Received: {len(caught)} ({caught})")


def test_every_state_defect_is_in_the_catalogue():
    assert STATE_DEFECTS <= {cls.name for cls in CATALOGUE}
