"""Coverage is a reported number (bnconform.reporting.coverage): behaviours judged per backend,
with convention twins folded, and the output groups a backend never observed. Hand-written
results documents (tests/report_documents.py)."""

from __future__ import annotations

from report_documents import adapter, case_meta, document, verdict

from bnconform.reporting.coverage import behaviour, coverage, coverage_line
from bnconform.reporting.pages import render


def _verdict(case, name, status="pass", compared=("y",), unobserved=()):
    cell = verdict(case, name, status)
    cell.update(compared=list(compared), unobserved=list(unobserved))
    return cell


def _document():
    """Three behaviours (a/x has two twins); fw.full judges all of them on every output group,
    fw.stateless two of them without running statistics, fw.broken errors and is unsupported."""
    metas = {c: case_meta() for c in ("a/x", "a/x_biased", "a/x_biased_zero_debias", "a/y", "b/z")}
    full = ("y", "batch_mean", "batch_var", "running_mean", "running_var")
    cells = [_verdict(c, "fw.full", compared=full) for c in metas]
    cells += [_verdict("a/x_biased", "fw.stateless", compared=("y", "batch_mean"), unobserved=("running_mean",)),
              _verdict("a/y", "fw.stateless", "fail", compared=("y",)),
              _verdict("b/z", "fw.stateless", "unsupported", compared=())]
    cells += [_verdict("a/x", "fw.broken", "error", compared=()), _verdict("a/y", "fw.broken", "unsupported", ())]
    return document({n: adapter() for n in ("fw.full", "fw.stateless", "fw.broken")}, metas, cells)


def test_twins_fold_into_one_behaviour():
    assert {behaviour(c) for c in ("a/x", "a/x_biased", "a/x_zero_debias", "a/x_biased_zero_debias")} == {"a/x"}
    assert behaviour("a/biased_input") == "a/biased_input"


def test_judged_counts_pass_deviation_and_fail_only_and_names_what_was_never_observed():
    table = coverage(_document())
    assert table["fw.full"] == {"judged": 3, "behaviours": 3, "never_observed": []}
    assert table["fw.stateless"] == {"judged": 2, "behaviours": 3, "never_observed": ["running statistics"]}
    assert table["fw.broken"]["judged"] == 0


def test_the_first_screen_carries_the_figure_fewest_first():
    line = coverage_line(_document())
    assert line.startswith("- Coverage, behaviours judged of 3")
    assert line.index("fw.broken 0") < line.index("fw.stateless 2 (never running statistics)") < line.index("fw.full 3")
    assert line in render(_document()).splitlines()[:40]
