"""Verdict rules: NaN-aware comparison, declared deviations, unsupported, bad adapter output."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bnconform import oracle
from bnconform.adapters.base import Adapter, Deviation, MatchesVariant, Mismatches, Raises, Unsupported, variant
from bnconform.compare import compare_output
from bnconform.judge import judge
from bnconform.validation import load_case

CASES = Path(__file__).resolve().parents[1] / "cases"
TOL = {"rtol": 1e-6, "atol": 1e-6}


def _case(case_id):
    return load_case(CASES / f"{case_id}.json")


def _adapter(run, deviations=(), supports=None):
    cls = type("Probe", (Adapter,), {"name": "probe", "framework": "numpy", "run": lambda self, c, d: run(c),
                                     "deviations": deviations,
                                     "supports": lambda self, c, d: supports})
    return cls()


def test_nan_positions_must_match():
    expected = np.array([1.0, np.nan, 3.0])
    assert compare_output(0, "y", expected, [1.0, np.nan, 3.0], TOL, "float32") is None
    moved = compare_output(0, "y", expected, [np.nan, 2.0, 3.0], TOL, "float32")
    assert moved.reason == "NaN position differs" and moved.index == [0]


def test_infinities_match_by_sign():
    expected = np.array([np.inf, -np.inf])
    assert compare_output(0, "y", expected, [np.inf, -np.inf], TOL, "float32") is None
    assert compare_output(0, "y", expected, [np.inf, np.inf], TOL, "float32").index == [1]


def test_fail_reports_numbers_in_plain_words():
    m = compare_output(2, "running_var", np.array([0.29, 1.0]), [0.31, 1.0], TOL, "float32")
    assert m.line().startswith("step 2: running_var[0]=0.31, but should be 0.29 (outside tolerance")
    assert m.ulps > 1000


def test_matches_variant_deviation_is_verified():
    case = _case("momentum/decay_0.9_biased_3steps")
    declared = Deviation("bessel", "biased cases", lambda c, d: True,
                         MatchesVariant("running variance is Bessel-corrected",
                                        lambda c: variant(c, running_stats={"variance": "bessel"})),
                         "why", "https://example.invalid")
    bessel = _adapter(lambda c: oracle.run_case(variant(c, running_stats={"variance": "bessel"})), (declared,))
    assert judge(bessel, case, "cpu").status == "deviation"
    honest = _adapter(oracle.run_case, (declared,))
    verdict = judge(honest, case, "cpu")
    assert verdict.status == "fail" and "results match the oracle" in verdict.detail


def test_mismatches_deviation_rejects_other_outputs():
    case = _case("formulas/scale_on_center_on_train")
    declared = Deviation("y-only", "all", lambda c, d: True, Mismatches(("running_mean",)), "why", "https://example.invalid")
    wrong_y = _adapter(lambda c: oracle.run_case(variant(c, center=False)), (declared,))
    verdict = judge(wrong_y, case, "cpu")
    assert verdict.status == "fail" and "mismatching outputs: ['y']" in verdict.detail


def test_raises_deviation_checks_type_and_message():
    case = _case("degenerate/n1_rank2_train")

    def boom(c):
        raise ValueError("Expected more than 1 value per channel")

    declared = Deviation("n1", "N = 1", lambda c, d: True, Raises("ValueError", "more than 1 value"), "why", "x")
    assert judge(_adapter(boom, (declared,)), case, "cpu").status == "deviation"
    other = Deviation("n1", "N = 1", lambda c, d: True, Raises("RuntimeError", ""), "why", "x")
    assert "raised ValueError" in judge(_adapter(boom, (other,)), case, "cpu").detail


def test_unsupported_from_supports_and_from_run():
    case = _case("formulas/rank2_nc_train")
    assert judge(_adapter(oracle.run_case, supports="no rank 2"), case, "cpu").detail == "no rank 2"

    def refuse(c):
        raise Unsupported("no float64")

    verdict = judge(_adapter(refuse), case, "cpu")
    assert (verdict.status, verdict.detail) == ("unsupported", "no float64")


def test_adapter_returning_wrong_step_count_is_an_error():
    verdict = judge(_adapter(lambda c: oracle.run_case(c)[:0]), _case("formulas/rank2_nc_train"), "cpu")
    assert verdict.status == "error" and "Expected: 1 step results" in verdict.detail
