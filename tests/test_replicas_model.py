"""Cross-replica cases: the expected moments equal a second formulation (Chan et al.'s pairwise
combination of per-replica count, mean and M2), the Bessel factor uses the global N, and bad
replica sizes are rejected with one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bnconform.execution.plan import discover_cases
from bnconform.caseformat.validation import CaseError, load_case

CASES_DIR = Path(__file__).resolve().parents[1] / "cases"
CASES = discover_cases(CASES_DIR, ["replicas"])


def _combine(parts, axis):
    """Chan, Golub & LeVeque (1979): merge (n, mean, M2) of each replica, one pair at a time."""
    n, mean, m2 = 0, 0.0, 0.0
    for part in parts:
        axes = tuple(a for a in range(part.ndim) if a != axis)
        k = int(np.prod([part.shape[a] for a in axes]))
        if k == 0:
            continue
        part_mean = part.mean(axis=axes)
        part_m2 = ((part - np.expand_dims(part_mean, axes)) ** 2).sum(axis=axes)
        delta = part_mean - mean
        mean = mean + delta * k / (n + k)
        m2 = m2 + part_m2 + delta ** 2 * n * k / (n + k)
        n += k
    return n, mean, m2 / n


@pytest.mark.parametrize("case", [c for c in CASES if c.steps[0].x.shape[0] > 0], ids=lambda c: c.id)
def test_expected_moments_equal_the_pairwise_combination_of_replicas(case):
    step = case.steps[0]
    x = step.x.astype(np.float64)
    ends = np.cumsum(step.replica_sizes)
    parts = [x[e - s:e] for s, e in zip(step.replica_sizes, ends)]
    _, mean, var = _combine(parts, case.config.channel_axis)
    np.testing.assert_allclose(step.expected["batch_mean"], mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(step.expected["batch_var"], var, rtol=1e-10, atol=1e-12)


def test_bessel_factor_uses_the_global_count():
    """4 replicas x 2 samples x 3 channels: N = 8, so running_var = 0.5 rv0 + 0.5 var * 8/7."""
    case = next(c for c in CASES if c.id == "replicas/r4_bessel_update")
    step = case.steps[0]
    assert sum(step.replica_sizes) == 8 and step.x.shape == (8, 3)
    expected = 0.5 * case.initial_state.running_var.astype(float) + 0.5 * step.expected["batch_var"] * 8 / 7
    np.testing.assert_allclose(step.expected["running_var"], expected, rtol=1e-14)


def test_every_replica_empty_is_the_empty_batch():
    case = next(c for c in CASES if c.id == "replicas/r2_all_empty_train")
    first = case.steps[0].expected
    assert first["y"].shape == (0, 3) and first["batch_mean"] is None and first["num_updates"] == 0
    np.testing.assert_array_equal(first["running_mean"], case.initial_state.running_mean)


def test_sizes_that_do_not_sum_to_the_batch_are_rejected(tmp_path):
    obj = json.loads((CASES_DIR / "replicas" / "r2_equal_train.json").read_text())
    obj["steps"][0]["replica_sizes"] = [4, 3]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(obj))
    with pytest.raises(CaseError, match=r"/steps/0/replica_sizes.*summing to the batch size 8.*\[4, 3\]"):
        load_case(path)
