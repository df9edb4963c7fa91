"""Verdict rules: NaN-aware comparison, declared deviations, unsupported, bad adapter output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bnconform.reference import oracle
from bnconform.adapters.base import Adapter, Deviation, MatchesVariant, Mismatches, Raises, Unsupported, variant
from bnconform.judging.capabilities import Capabilities
from bnconform.judging.compare import compare_output
from bnconform.judging.judge import judge
from bnconform.judging.selectors import ANY
from bnconform.caseformat.validation import load_case

CASES = Path(__file__).resolve().parents[1] / "cases"
TOL = {"rtol": 1e-6, "atol": 1e-6}


def _case(case_id):
    return load_case(CASES / f"{case_id}.json")


def _adapter(run, deviations=(), supports=None, capabilities=Capabilities()):
    cls = type("Probe", (Adapter,), {"name": "probe", "framework": "numpy", "run": lambda self, c, d: run(c),
                                     "deviations": deviations, "capabilities": capabilities,
                                     "supports": lambda self, c, d: supports})
    return cls()


def _bessel(c):
    return variant(c, running_stats={"variance": "bessel"})


def test_nan_positions_must_match():
    expected = np.array([1.0, np.nan, 3.0])
    assert compare_output(0, "y", expected, [1.0, np.nan, 3.0], TOL, "float32") is None
    moved = compare_output(0, "y", expected, [np.nan, 2.0, 3.0], TOL, "float32")
    assert moved.reason == "NaN position differs" and moved.index == [0]


def test_infinities_match_by_sign():
    expected = np.array([np.inf, -np.inf])
    assert compare_output(0, "y", expected, [np.inf, -np.inf], TOL, "float32") is None
    assert compare_output(0, "y", expected, [np.inf, np.inf], TOL, "float32").index == [1]


def test_a_value_beyond_the_dtype_range_is_also_met_by_its_infinity():
    """float16's largest finite value is 65504 and its round-to-nearest overflow threshold 65520
    (65504 + half an ulp of 32): 96187.5 and -70000 can only be stored as +inf and -inf; 65519
    rounds to 65504, so it is not an overflow. The exact value (an output kept wider) still passes."""
    expected = np.array([96187.5, -70000.0, 65519.0])
    assert compare_output(0, "y", expected, [np.inf, -np.inf, 65504.0], {"rtol": 1e-3, "atol": 0.0}, "float16") is None
    assert compare_output(0, "y", expected, expected, TOL, "float16") is None
    for wrong, index in (([-np.inf, -np.inf, 65504.0], 0), ([65504.0, -np.inf, 65504.0], 0),
                         ([np.inf, -np.inf, np.inf], 2), ([np.nan, -np.inf, 65504.0], 0)):
        assert compare_output(0, "y", expected, wrong, {"rtol": 1e-3, "atol": 0.0}, "float16").index == [index]
    assert compare_output(0, "y", expected, [np.inf, -np.inf, 65519.0], TOL, "float32").index == [0]  # in range


def test_fail_reports_numbers_in_plain_words():
    m = compare_output(2, "running_var", np.array([0.29, 1.0]), [0.31, 1.0], TOL, "float32")
    assert m.line().startswith("step 2: running_var[0]=0.31, but should be 0.29 (outside tolerance")
    assert m.ulps > 1000


def test_matches_variant_deviation_is_verified():
    case = _case("momentum/decay_0.9_biased_3steps")
    declared = Deviation("bessel", "defect", ANY,
                         MatchesVariant("running variance is Bessel-corrected",
                                        lambda c: variant(c, running_stats={"variance": "bessel"})),
                         "why", "https://example.invalid")
    bessel = _adapter(lambda c: oracle.run_case(variant(c, running_stats={"variance": "bessel"})), (declared,))
    assert judge(bessel, case, "cpu").status == "deviation"
    honest = _adapter(oracle.run_case, (declared,))
    verdict = judge(honest, case, "cpu")
    assert verdict.status == "fail" and "not observed" in verdict.detail


def test_mismatches_deviation_rejects_other_outputs():
    case = _case("formulas/scale_on_center_on_train")
    declared = Deviation("y-only", "defect", ANY, Mismatches(("running_mean",)), "why", "https://example.invalid")
    wrong_y = _adapter(lambda c: oracle.run_case(variant(c, center=False)), (declared,))
    verdict = judge(wrong_y, case, "cpu")
    assert verdict.status == "fail" and "step 0: y[" in verdict.detail and "not observed" in verdict.detail


def test_raises_deviation_checks_type_and_message():
    case = _case("degenerate/n1_rank2_train")

    def boom(c):
        raise ValueError("Expected more than 1 value per channel")

    declared = Deviation("n1", "edge", ANY, Raises("ValueError", "more than 1 value"), "why", "x")
    assert judge(_adapter(boom, (declared,)), case, "cpu").status == "deviation"
    other = Deviation("n1", "edge", ANY, Raises("RuntimeError", ""), "why", "x")
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


def test_every_applicable_deviation_is_verified():
    """Two declarations on one cell: both must be needed; a second one that explains nothing fails."""
    case = _case("momentum/decay_0.9_biased_3steps")
    bessel = Deviation("bessel", "defect", ANY, MatchesVariant("Bessel", _bessel), "why", "x")
    eps = Deviation("eps", "precision", ANY, MatchesVariant("eps 1e-3", lambda c: variant(c, epsilon=1e-3)), "why", "x")
    both_wrong = _adapter(lambda c: oracle.run_case(variant(_bessel(c), epsilon=1e-3)), (bessel, eps))
    verdict = judge(both_wrong, case, "cpu")
    assert (verdict.status, verdict.deviations) == ("deviation", ["bessel", "eps"])
    assert verdict.kinds == ["defect", "precision"]
    only_bessel = _adapter(lambda c: oracle.run_case(_bessel(c)), (bessel, eps))
    stale = judge(only_bessel, case, "cpu")
    assert stale.status == "fail" and "eps" in stale.detail and "explained without it" in stale.detail


def test_deviation_kind_is_a_closed_set():
    with pytest.raises(ValueError, match="kind Expected: one of"):
        Deviation("x", "convention", ANY, Raises("E"), "why", "x")


def test_convention_makes_dependent_cases_unsupported_and_runs_the_rest():
    """A Bessel-only API: a biased case whose results depend on the kind is unsupported with the
    reason; a biased case where the kind cannot matter (N == 1 updates) still runs and passes."""
    bessel_only = _adapter(lambda c: oracle.run_case(_bessel(c)),
                           capabilities=Capabilities(running_variance=frozenset({"bessel"})))
    dependent = judge(bessel_only, _case("momentum/decay_0.9_biased_3steps"), "cpu")
    assert dependent.status == "unsupported"
    assert "always uses a Bessel-corrected running variance" in dependent.detail
    independent = judge(bessel_only, _case("degenerate/n1_rank2_biased_train"), "cpu")
    assert independent.status == "pass"


def test_structural_capability_names_expected_and_received():
    rank2_only = _adapter(oracle.run_case, capabilities=Capabilities(ranks=frozenset({2})))
    verdict = judge(rank2_only, _case("momentum/decay_0.9_bessel_rank4_nchw"), "cpu")
    assert verdict.status == "unsupported" and "Expected: [2]. Received: 4" in verdict.detail
