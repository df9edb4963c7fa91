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


def test_release_reads_only_the_leading_dotted_numbers():
    """A sweep's version string names the backend after the release ('3.3.3 (jax 0.4.26)'): none of
    it may leak into the comparison, or a patch-level bound would compare (3, 3, 30, 4, 26)."""
    from bnconform.judging.declarations import release

    assert release("3.3.3 (jax 0.4.26)") == (3, 3, 3)
    assert release("2.13.0+cpu") == (2, 13, 0) and release("2.0.0rc1") == (2, 0, 0)
    assert release("not installed") == () and release("") == ()
    assert release("3.3.3 (jax 0.4.26)") < release("3.3.4")
