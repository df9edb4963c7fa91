"""Each deliberately wrong backward pass must be caught by the gradients family.

The wrong adapters run the oracle with one classic backward bug patched into its building blocks
(bnconform.reference.gradients), so the forward outputs stay right and only the gradients are wrong.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from bnconform.reference import oracle, gradients as oracle_gradients
from bnconform.adapters.numpy_oracle import OracleAdapter
from bnconform.execution.plan import discover_cases
from bnconform.judging.judge import judge
from bnconform.caseformat.model import count_per_channel

CASES = discover_cases(Path(__file__).resolve().parents[1] / "cases", ["gradients"])
_batch_dx, _parameter_gradients = oracle_gradients.batch_dx, oracle_gradients.parameter_gradients


class _WrongBackward(OracleAdapter):
    """The oracle adapter with ``target`` in bnconform.reference.gradients replaced by ``wrong``."""

    target = "batch_dx"

    @staticmethod
    def wrong(*args, **kwargs):
        raise NotImplementedError

    def run(self, case, device):
        with mock.patch.object(oracle_gradients, self.target, self.wrong):
            return oracle.run_case(case)


class ConstantStatistics(_WrongBackward):
    """dx = gamma dy / sigma_B: the batch mean and variance treated as constants."""

    name = "wrong.backward_constant_statistics"

    @staticmethod
    def wrong(x, dy, mean, var, gain, config, weights=None):
        return oracle.broadcast(gain * oracle.inverse_std(var, config), x.ndim, config.channel_axis) * dy


class BesselInBackward(_WrongBackward):
    """The backward normalizes with the Bessel-corrected variance N / (N - 1) v."""

    name = "wrong.backward_bessel_variance"

    @staticmethod
    def wrong(x, dy, mean, var, gain, config, weights=None):
        n = count_per_channel(x.shape, config.channel_axis)
        return _batch_dx(x, dy, mean, var * n / max(n - 1, 1), gain, config, weights)


class NoEpsilonInBackward(_WrongBackward):
    """The backward drops epsilon (1 / sqrt(var) where the forward used 1 / sqrt(var + eps))."""

    name = "wrong.backward_drops_epsilon"

    @staticmethod
    def wrong(x, dy, mean, var, gain, config, weights=None):
        return _batch_dx(x, dy, mean, var, gain, replace(config, epsilon=0.0, epsilon_floor=0.0), weights)


class DgammaTimesN(_WrongBackward):
    """dgamma summed then multiplied by N (a mean taken as a sum, or the reverse)."""

    name = "wrong.dgamma_times_n"
    target = "parameter_gradients"

    @staticmethod
    def wrong(dy, normalized, config):
        found = _parameter_gradients(dy, normalized, config)
        n = count_per_channel(dy.shape, config.channel_axis)
        return {**found, "dgamma": None if found["dgamma"] is None else found["dgamma"] * n}


@pytest.mark.parametrize("wrong", [ConstantStatistics, BesselInBackward, NoEpsilonInBackward, DgammaTimesN],
                         ids=lambda cls: cls.name)
def test_wrong_backward_is_caught(wrong):
    verdicts = [judge(wrong(), case, "cpu") for case in CASES]
    failed = [v for v in verdicts if v.status == "fail"]
    assert len(failed) >= 3, f"{wrong.name}: caught by {len(failed)} gradients cases"
    assert all(v.status in ("pass", "fail") for v in verdicts)
    assert any("but should be" in v.detail and v.mismatches[0]["output"] in ("dx", "dgamma") for v in failed)


def test_oracle_backward_passes_and_forward_only_adapters_are_unsupported():
    assert [judge(OracleAdapter(), c, "cpu").status for c in CASES] == ["pass"] * len(CASES)

    class ForwardOnly(OracleAdapter):
        name = "forward.only"
        capabilities = replace(OracleAdapter.capabilities, gradients=frozenset())

    verdict = judge(ForwardOnly(), CASES[0], "cpu")
    assert verdict.status == "unsupported" and "gradients" in verdict.detail


def test_an_adapter_that_returns_no_gradients_is_an_error_not_a_pass():
    class Silent(OracleAdapter):
        name = "silent.gradients"

        def run(self, case, device):
            return [{k: v for k, v in r.items() if k not in ("dx", "dgamma", "dbeta")} for r in oracle.run_case(case)]

    verdict = judge(Silent(), CASES[0], "cpu")
    assert verdict.status == "error" and "dx" in verdict.detail, verdict.detail
    assert np.isfinite(CASES[0].steps[0].expected["dx"]).all()
