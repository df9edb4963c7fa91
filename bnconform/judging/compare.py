"""NaN-aware comparison of a framework's outputs with the oracle's, under per-element bounds.

For each compared output: NaN positions must match exactly, infinities must match by sign, and
each finite value must satisfy ``|got - expected| <= bound`` for its own element's bound
(bnconform.reference.bounds: derived from the element's conditioning, capped by the case file's
``atol + rtol * |expected|``); a finite expected value beyond the output dtype's range is also
met by the infinity of its sign, which an implementation storing the output in that dtype must
return (:func:`overflow_infinity`). The reductions (batch moments, running statistics, dgamma,
dbeta) must also show no systematic bias: the mean of the signed errors over their elements,
each divided by its bound, stays within bounds.BIAS_LIMIT.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..caseformat.dtypes import numpy_dtype
from ..caseformat.model import GRADIENT_KEYS, OUTPUT_KEYS, RENORM_STATE_KEYS, Case
from ..reference.bounds import (BIAS_LIMIT, REDUCTION_KEYS, SPREAD_LIMIT, SPREAD_MIN_ELEMENTS, element_bound,
                                reduction_bias, reduction_spread)

COMPARED_KEYS = OUTPUT_KEYS + RENORM_STATE_KEYS + GRADIENT_KEYS
_INPUT_DTYPE_KEYS = ("y", "batch_mean", "batch_var", "dx")  # the rest are in the param dtype


@dataclass
class Mismatch:
    """The numbers behind a failed output, enough to reproduce the finding.

    ``index``, ``expected`` and ``got`` name the worst element (see :func:`worst_index`);
    ``outside`` of the output's ``elements`` elements fail (both 0 where the output is not an
    array of values: a counter, a device count, a shape)."""

    step: int
    output: str
    index: list[int]
    expected: float
    got: float
    max_abs_error: float
    max_rel_error: float
    ulps: float
    reason: str
    outside: int = 0
    elements: int = 0

    def line(self) -> str:
        """One line: the worst element's value and the expected one, printed with enough digits to
        differ, then the reason, how many elements fail and the error figures."""
        where = f"{self.output}[{','.join(map(str, self.index))}]" if self.index else self.output
        if self.reason.startswith("shape "):  # no value to quote: the arrays do not line up
            return f"step {self.step}: {where} has {self.reason}"
        got, expected = distinct_texts(self.got, self.expected)
        count = f"{self.outside} of {self.elements} elements differ; " if self.elements else ""
        return (f"step {self.step}: {where}={got}, but should be {expected} "
                f"({self.reason}; {count}max abs err {self.max_abs_error:.3g}, "
                f"max rel err {self.max_rel_error:.3g}, {self.ulps:.3g} ulp)")

    def to_json(self) -> dict:
        return {k: (v if not isinstance(v, float) or np.isfinite(v) else repr(v)) for k, v in asdict(self).items()}


def distinct_texts(got: float, expected: float) -> tuple[str, str]:
    """``got`` and ``expected`` in ``%g`` form with the fewest significant digits, from 6 up to 17,
    at which the two texts differ (17 digits tell any two distinct float64 values apart); equal
    values (or NaN and NaN) get 6 digits."""
    for digits in range(6, 18):
        texts = f"{got:.{digits}g}", f"{expected:.{digits}g}"
        if texts[0] != texts[1] or got == expected or (np.isnan(got) and np.isnan(expected)):
            return texts
    return texts


def _ulps(diff, expected, dtype: str) -> float:
    with np.errstate(invalid="ignore", over="ignore"):
        spacing = np.spacing(np.abs(expected).astype(numpy_dtype(dtype))).astype(np.float64)
        ratio = diff / np.where(spacing > 0, spacing, np.finfo(np.float64).tiny)
    return float(np.nanmax(ratio)) if ratio.size else 0.0


def overflow_infinity(expected, dtype: str) -> np.ndarray:
    """Where a finite expected value lies beyond the range of ``dtype``: the infinity of its sign,
    which IEEE round-to-nearest gives an implementation storing that output in ``dtype``; NaN
    elsewhere."""
    expected = np.asarray(expected, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        rounded = expected.astype(numpy_dtype(dtype)).astype(np.float64)
    return np.where(np.isinf(rounded) & np.isfinite(expected), rounded, np.nan)


def compare_output(step: int, key: str, expected, got, bound, dtype: str) -> Mismatch | None:
    """None if ``got`` agrees with ``expected`` element by element within ``bound`` (an array
    broadcasting to the output, or a stored ``{"rtol", "atol"}`` pair); else a Mismatch naming the
    worst element (:func:`worst_index`) with the output's error figures and count of failing
    elements. An expected value beyond the range of ``dtype`` is also met by the infinity of its
    sign (the output stored in ``dtype``), as well as by the value itself (an output kept wider)."""
    expected = np.asarray(expected, dtype=np.float64)
    if isinstance(bound, dict):
        bound = bound["atol"] + bound["rtol"] * np.abs(expected)
    got = np.asarray(got, dtype=np.float64)
    if got.shape != expected.shape:
        return Mismatch(step, key, [], float("nan"), float("nan"), float("inf"), float("inf"), float("inf"),
                        f"shape {list(got.shape)} instead of {list(expected.shape)}")
    nan_e, nan_g = np.isnan(expected), np.isnan(got)
    inf_bad = np.isinf(expected) & (got != expected)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(got - expected)
        bad = (nan_e != nan_g) | inf_bad | (~nan_e & ~np.isinf(expected) & ~(diff <= bound))
        bad &= ~(got == overflow_infinity(expected, dtype))
    if not bad.any():
        return None
    finite = np.isfinite(expected) & np.isfinite(got)
    abs_err = float(diff[finite].max()) if finite.any() else float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = diff[finite] / np.abs(expected[finite])
    worst = worst_index(expected, got, bad, bound)
    reason = "NaN position differs" if nan_e[worst] != nan_g[worst] else "outside tolerance"
    return Mismatch(step, key, list(worst), float(expected[worst]), float(got[worst]), abs_err,
                    float(np.nanmax(rel)) if rel.size else float("nan"),
                    _ulps(np.where(finite, diff, 0.0), expected, dtype), reason, int(bad.sum()), int(bad.size))


def worst_index(expected: np.ndarray, got: np.ndarray, bad: np.ndarray, bound) -> tuple[int, ...]:
    """The index of the failing element (``bad``) that exceeds its bound by the largest absolute
    margin, ``|got - expected| - bound``. A NaN or infinity where the other side differs counts
    as an infinite margin; ties go to the first in C order."""
    with np.errstate(invalid="ignore", over="ignore"):
        margin = np.abs(got - expected) - bound
    margin = np.where(np.isfinite(expected) & np.isfinite(got), margin, np.inf)
    score = np.where(bad, margin, -np.inf)
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(score)), score.shape))


def compare_case(case: Case, results: list[dict], expected_steps=None) -> tuple[list[Mismatch], list[str]]:
    """All mismatches over steps, and the names of outputs that were compared.

    ``expected_steps`` defaults to the case file's expected values, judged by per-element bounds
    (bnconform.reference.bounds). A declared deviation passes the oracle's results for a variant
    case instead: a model of another computation (half arithmetic, say), not the float64 truth the
    bounds are derived around, so those are judged by the case file's stored pairs.
    """
    if len(results) != len(case.steps):
        raise ValueError(f"Expected: {len(case.steps)} step results. Received: {len(results)}")
    derived = expected_steps is None
    expected_steps = expected_steps or [s.expected for s in case.steps]
    mismatches, compared = [], set()
    for i, (step, expected, got) in enumerate(zip(case.steps, expected_steps, results)):
        if got is None:  # a step the API could not run (bnconform.judging.stepwise): not judged
            continue
        _require_outputs(i, step, expected, got)
        for key in COMPARED_KEYS:
            if expected.get(key) is None or got.get(key) is None:
                continue
            dtype = case.config.input_dtype if key in _INPUT_DTYPE_KEYS else case.config.param_dtype
            compared.add(key)
            if step.tolerance.get(key) is None:  # a variant may define an output the case leaves undefined
                continue
            if derived:
                found = output_mismatch(case, i, key, got[key], expected[key])
            else:
                found = compare_output(i, key, expected[key], got[key], step.tolerance[key], dtype)
            if found:
                mismatches.append(found)
        if step.replica_sizes is not None and got.get("replicas") is not None:
            compared.add("replicas")  # how many devices the adapter really ran the step on
            if int(got["replicas"]) != len(step.replica_sizes):
                mismatches.append(Mismatch(i, "replicas", [], float(len(step.replica_sizes)), float(got["replicas"]),
                                           float("nan"), float("nan"), float("nan"), "ran on another number of devices"))
        counter = _compare_count(i, expected.get("num_updates"), got.get("num_updates"))
        if counter is not None:
            compared.add("num_updates")
            mismatches += [counter] if counter else []
    return mismatches, sorted(compared, key=(*COMPARED_KEYS, "num_updates", "replicas").index)


def output_mismatch(case: Case, index: int, key: str, got, expected=None) -> Mismatch | None:
    """How the judge finds ``got`` for output ``key`` of step ``index``, against the case's own
    expected values (or ``expected``): each element within its derived bound, then, for a
    reduction, no systematic bias. For a selector asking whether a behaviour would show."""
    expected = case.steps[index].expected[key] if expected is None else expected
    dtype = case.config.input_dtype if key in _INPUT_DTYPE_KEYS else case.config.param_dtype
    bound = element_bound(case, index, key, expected, case.steps[index].tolerance.get(key))
    found = compare_output(index, key, expected, got, bound, dtype)
    if found is None and key in REDUCTION_KEYS:
        found = _biased(index, key, expected, got, bound)
    return found


def _biased(step: int, key: str, expected, got, bound) -> Mismatch | None:
    """A Mismatch when every element is within its bound but the errors lean one way: the mean of
    (got - expected) / bound over the elements beyond +-BIAS_LIMIT (bnconform.reference.bounds)."""
    bias = reduction_bias(expected, got, bound)
    spread, count = reduction_spread(expected, got, bound)
    if abs(bias) <= BIAS_LIMIT and (count < SPREAD_MIN_ELEMENTS or spread <= SPREAD_LIMIT):
        return None
    e, g = np.asarray(expected, np.float64), np.asarray(got, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(np.isfinite(e) & np.isfinite(g), np.abs(g - e) / bound, -np.inf)
    worst = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
    diff = np.abs(g - e)[np.isfinite(e) & np.isfinite(g)]
    return Mismatch(step, key, [int(i) for i in worst], float(e[worst]), float(g[worst]), float(diff.max()),
                    float("nan"), float("nan"), _statistics_reason(bias, spread), 0, int(e.size))


def _statistics_reason(bias: float, spread: float) -> str:
    if abs(bias) > BIAS_LIMIT:
        return f"systematic bias: the errors average {bias:+.2f} of their bounds (limit {BIAS_LIMIT}), all within them"
    return (f"errors too large throughout: their root mean square is {spread:.2f} of their bounds (limit "
            f"{SPREAD_LIMIT}), all within them")


def _require_outputs(i: int, step, expected: dict, got: dict) -> None:
    """y always; on a step with an upstream gradient, every gradient the oracle defines (an adapter
    that silently returned none would otherwise pass)."""
    required = ["y"] + [k for k in GRADIENT_KEYS if step.dy is not None and expected.get(k) is not None]
    missing = [k for k in required if got.get(k) is None]
    if missing:
        raise ValueError(f"step {i}: Expected: outputs {required}. Received: {sorted(got)} (missing {missing})")


def _compare_count(step: int, expected, got):
    """num_updates is an integer counter: compared exactly. None if either side lacks it,
    False if equal, else a Mismatch."""
    if expected is None or got is None:
        return None
    got = int(np.asarray(got))
    if got == int(expected):
        return False
    return Mismatch(step, "num_updates", [], float(expected), float(got), abs(got - expected), float("nan"),
                    float("nan"), "counter differs")
