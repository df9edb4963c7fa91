"""A backend that aborts, hangs or raises costs only its own cells; the run finishes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bnconform.matrix import discover_cases, plan
from bnconform.runner import run_cells

ROOT = Path(__file__).resolve().parents[1]
TESTS = str(ROOT / "tests")


@pytest.fixture(autouse=True)
def _importable_in_workers(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [TESTS, os.environ.get("PYTHONPATH")])))


def _cases(*ids):
    return [c for c in discover_cases(ROOT / "cases") if c.id in ids]


def test_crashing_backend_costs_only_its_own_cells():
    cases = _cases("formulas/rank2_nc_train", "formulas/gamma_zero_train", "degenerate/c1_rank2")
    cells = plan(cases, ["faulty_adapters:CrashingAdapter", "numpy.oracle"])
    verdicts, _ = run_cells(cells, jobs=2, timeout=60)
    by_cell = {(v.adapter, v.case): v for v in verdicts}
    crashed = [by_cell[("test.crashing", c)] for c in ("formulas/rank2_nc_train", "formulas/gamma_zero_train")]
    assert all(v.status == "error" and "SIGABRT" in v.detail for v in crashed)
    # The worker restarts after the crash: the next case of the same backend still runs.
    assert by_cell[("test.crashing", "degenerate/c1_rank2")].status == "pass"
    assert all(v.status == "pass" for v in verdicts if v.adapter == "numpy.oracle")


def test_hanging_backend_times_out_and_recovers():
    cases = _cases("degenerate/c1_rank2", "degenerate/c1_rank4_nhwc")
    verdicts, _ = run_cells(plan(cases, ["faulty_adapters:HangingAdapter"]), jobs=1, timeout=3)
    statuses = {v.case: (v.status, v.detail) for v in verdicts}
    assert statuses["degenerate/c1_rank2"][0] == "error" and "no answer within 3 s" in statuses["degenerate/c1_rank2"][1]
    assert statuses["degenerate/c1_rank4_nhwc"][0] == "pass"


def test_raising_backend_gives_one_line_errors():
    verdicts, _ = run_cells(plan(_cases("degenerate/c1_rank2"), ["faulty_adapters:RaisingAdapter"]), jobs=1)
    assert verdicts[0].status == "error"
    assert verdicts[0].detail == "RuntimeError: kernel exploded"


def test_stale_deviation_fails_instead_of_passing():
    verdicts, _ = run_cells(plan(_cases("degenerate/n1_rank2_train"), ["faulty_adapters:StaleDeviationAdapter"]), jobs=1)
    assert verdicts[0].status == "fail"
    assert verdicts[0].detail.startswith("declared deviation not observed (n1-raises")
