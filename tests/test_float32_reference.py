"""The per-element error bounds let a right float32 implementation pass every case it can express
(issue 20), and still catch float32 implementations that take a precision shortcut.

tests/float32_reference.py computes BN in float32 with two-pass moments. It must pass every shipped
case its capabilities cover -- except where float32 cannot hold the squares at all, which it
declares (float32-variance-overflow) and the judge verifies -- and it must run a substantial
number of cases, so that the test cannot pass vacuously. Two wrong variants must fail some
cases: one-pass moments (E[x^2] - E[x]^2 in float32) and a mean accumulated in float16.
"""

from __future__ import annotations

import collections
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from bnconform.execution.plan import discover_cases
from bnconform.judging.judge import judge
from float32_reference import F32, Float32TwoPass, two_pass  # tests/ is on sys.path (conftest)

ROOT = Path(__file__).resolve().parents[1]
MIN_RUN = 150  # cases the float32 reference must pass (397 of 468 when written; 62 float64 cases are unsupported)
MIN_CAUGHT = 5  # cases each wrong variant must fail


@cache
def _cases() -> tuple:
    return tuple(discover_cases(ROOT / "cases"))


def _verdicts(adapter) -> list:
    return [judge(adapter, case, "cpu") for case in _cases()]


def _failures(verdicts) -> str:
    """Every fail / error cell: the judge's line, then each mismatching output's figures."""
    lines = []
    for v in verdicts:
        if v.status in ("fail", "error"):
            outputs = "; ".join(f"{m['output']} step {m['step']}: {m['outside']}/{m['elements']} outside, "
                                f"max abs err {m['max_abs_error']}" for m in v.mismatches)
            lines.append(f"{v.case} {v.status}: {v.detail} || {outputs}")
    return "\n".join(lines)


def test_right_float32_passes_every_case_it_can_express():
    verdicts = _verdicts(Float32TwoPass())
    counts = collections.Counter(v.status for v in verdicts)
    assert set(counts) <= {"pass", "unsupported", "deviation"}, f"{dict(counts)}\n{_failures(verdicts)}"
    declared = {name for v in verdicts for name in v.deviations}
    assert declared <= {"float32-variance-overflow"}, declared
    assert counts["pass"] >= MIN_RUN, f"only {counts['pass']} cases pass: {dict(counts)}"


def one_pass(x, lay, weights=None):
    """The shortcut: var = max(sum(w x^2) / W - mean^2, 0) in float32 (cancels when |mean| >> std)."""
    w = np.ones_like(x) if weights is None else weights
    with np.errstate(all="ignore"):
        total = lay.sum(w)
        mean = lay.sum(w * x) / total
        return mean, np.maximum(lay.sum(w * x * x) / total - mean * mean, F32(0))


def half_mean(x, lay, weights=None):
    """Two-pass, but the mean is accumulated in float16 (a half kernel without a float32 accumulator)."""
    if weights is not None:
        return two_pass(x, lay, weights)
    with np.errstate(all="ignore"):
        n = np.float16(x.size // x.shape[lay.axis])
        mean = (np.sum(x.astype(np.float16), axis=lay.axes, dtype=np.float16) / n).astype(F32)
        centered = x - lay.b(mean)
        return mean, lay.sum(centered * centered) / F32(x.size // x.shape[lay.axis])


class OnePassFloat32(Float32TwoPass):
    """Float32TwoPass with one-pass moments."""

    name = "test.float32_one_pass"
    moments = staticmethod(one_pass)


class HalfMeanFloat32(Float32TwoPass):
    """Float32TwoPass with the mean accumulated in float16."""

    name = "test.float32_half_mean"
    moments = staticmethod(half_mean)


@pytest.mark.parametrize("wrong", [OnePassFloat32, HalfMeanFloat32], ids=lambda cls: cls.name)
def test_a_float32_shortcut_fails_some_cases(wrong):
    verdicts = _verdicts(wrong())
    failed = [v for v in verdicts if v.status == "fail"]
    assert len(failed) >= MIN_CAUGHT, f"{wrong.name}: only {len(failed)} cases fail"
