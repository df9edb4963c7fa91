"""Each deliberately wrong adapter must be caught by at least one case; the oracle by none."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

import faulty_adapters as faulty
from bnconform.adapters.numpy_oracle import OracleAdapter
from bnconform.judging.judge import judge
from bnconform.execution.plan import discover_cases

CASES = discover_cases(Path(__file__).resolve().parents[1] / "cases")
WRONG = [faulty.EpsOutsideSqrt, faulty.MomentumFlipped, faulty.VarianceKindSwapped, faulty.UpdatesInEval,
         faulty.IgnoresBeta, faulty.WrongReductionAxes]


def test_oracle_adapter_passes_every_case():
    adapter = OracleAdapter()
    failing = [v.cell_id for v in (judge(adapter, case, "cpu") for case in CASES) if v.status != "pass"]
    assert failing == []


@pytest.mark.parametrize("wrong", WRONG, ids=lambda cls: cls.name)
def test_wrong_adapter_is_caught(wrong):
    adapter = wrong()
    verdicts = [judge(adapter, case, "cpu") for case in CASES]
    caught = collections.Counter(v.family for v in verdicts if v.status == "fail")
    assert sum(caught.values()) >= 1, f"{wrong.name}: no case catches this bug"
    # A caught bug must be reported with numbers, not just a status.
    first = next(v for v in verdicts if v.status == "fail")
    assert "but should be" in first.detail and first.mismatches


def test_each_family_has_its_own_catch():
    """The bugs each family is written for are caught inside that family."""
    expectations = {faulty.EpsOutsideSqrt: "epsilon", faulty.MomentumFlipped: "momentum",
                    faulty.VarianceKindSwapped: "momentum", faulty.UpdatesInEval: "momentum",
                    faulty.IgnoresBeta: "formulas", faulty.WrongReductionAxes: "formulas"}
    for wrong, family in expectations.items():
        adapter = wrong()
        statuses = [judge(adapter, c, "cpu").status for c in CASES if c.family == family]
        assert "fail" in statuses, f"{wrong.name} not caught by the {family} family"
