"""No dead declarations: every declared deviation and every conditional capability (`when`) of
every registered adapter selects at least one cell of the shipped families that the adapter can
express, so each is re-verified on every run instead of silently going stale."""

from __future__ import annotations

from pathlib import Path

import pytest

from bnconform.adapters.registry import known, load_class
from bnconform.execution.plan import discover_cases
from bnconform.judging.capabilities import unsupported_reason
from bnconform.judging.stepwise import step_cases

CASES = discover_cases(Path(__file__).resolve().parents[1] / "cases")


def _expressible_cells(cls, selector):
    """(case id, device) cells the selector picks that the adapter's capabilities can express; for
    an API without running state, the one-step cases it is judged on (bnconform.judging.stepwise)."""
    for case in CASES:
        judged = [case] if getattr(cls, "keeps_state", True) else step_cases(case)
        for device in cls.device_kinds:
            if any(selector(one, device) and unsupported_reason(cls.capabilities, one, device, cls.name) is None
                   for one in judged):
                yield case.id, device


@pytest.mark.parametrize("name", sorted(known()))
def test_every_declaration_selects_a_cell(name):
    cls = load_class(known()[name])  # adapter modules import no framework: this is cheap
    dead = [f"deviation {d.name!r} ({d.applies.describe()})" for d in cls.deviations
            if next(_expressible_cells(cls, d.applies), None) is None]
    dead += [f"capability override {changes} when {selector.describe()}" for selector, changes in cls.capabilities.when
             if not any(selector(c, d) for c in CASES for d in cls.device_kinds)]
    assert not dead, f"{name}: applies to no cell of the shipped families: {'; '.join(dead)}"
