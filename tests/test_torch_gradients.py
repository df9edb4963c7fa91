"""Gradient plumbing of the torch adapters (autograd through nn.BatchNorm and F.batch_norm) and
of the numpy.oracle adapter. Expected numbers come from the case files (the float64 oracle) or
from closed forms written here, never from the code under test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import in_framework_process, requires

from bnconform.adapters.numpy_oracle import OracleAdapter
from bnconform.adapters.torch.common import torch
from bnconform.adapters.torch.functional import TorchFunctionalAdapter
from bnconform.adapters.torch.nn import TorchModuleAdapter
from bnconform.judging.judge import judge
from bnconform.caseformat.model import Config
from bnconform.specs import EVAL, TRAIN, Spec, build
from bnconform.caseformat.validation import load_case

# the torch adapter modules import torch lazily, so only the tests marked TORCH need it
pytestmark = in_framework_process("torch")
TORCH = requires("torch")
ADAPTERS = [TorchModuleAdapter, TorchFunctionalAdapter]
CASES = Path(__file__).resolve().parent.parent / "cases" / "gradients"
_ADAPTERS = {}  # one instance per class: nn's module cache is reused across tests


def _adapter(cls):
    return _ADAPTERS.setdefault(cls, cls())


def _case(name: str):
    return load_case(CASES / f"{name}.json")


def _ad_hoc(name, config, shape, steps=(TRAIN,), dy=lambda rng, shape, i: rng.normal(size=shape), **kw):
    return build(Spec("gradients", name, "ad hoc", config, [shape], steps=steps, make_dy=dy, **kw))


def test_oracle_adapter_declares_and_returns_gradients():
    adapter, case = OracleAdapter(), _case("train_then_eval")
    assert adapter.capabilities.gradients == {"batch", "running"}
    verdict = judge(adapter, case, "cpu")
    assert verdict.status == "pass", verdict.detail
    assert {"dx", "dgamma", "dbeta"} <= set(verdict.compared)


@TORCH
@pytest.mark.parametrize("cls", ADAPTERS)
@pytest.mark.parametrize("name", ["rank4_nhwc_train", "rank4_nchw_eval", "rank3_nlc_train", "train_then_eval",
                                  "float16_train", "bfloat16_eval", "dy_ones_train"])
def test_gradient_cases_pass_with_every_gradient_compared(cls, name):
    verdict = judge(_adapter(cls), _case(name), "cpu")
    assert verdict.status == "pass", verdict.detail
    assert {"dx", "dgamma", "dbeta"} <= set(verdict.compared)


@TORCH
@pytest.mark.parametrize("name, present", [("scale_off_center_on_train", {"dbeta"}),
                                           ("scale_on_center_off_train", {"dgamma"}),
                                           ("scale_off_center_off_train", set())])
def test_functional_returns_only_the_parameters_it_was_given(name, present):
    case = _case(name)
    results = _adapter(TorchFunctionalAdapter).run(case, "cpu")
    assert {k for k in ("dgamma", "dbeta") if k in results[0]} == present
    assert judge(_adapter(TorchFunctionalAdapter), case, "cpu").status == "pass"


@TORCH
@pytest.mark.parametrize("cls", ADAPTERS)
def test_all_ones_dy_closed_forms(cls):
    """dy = 1: training dx = 0 (the batch mean absorbs a constant shift), dgamma = sum(x_hat) = 0,
    dbeta = N; inference dx = gamma / sqrt(running_var + eps)."""
    config = Config(channel_axis=3, input_dtype="float64", param_dtype="float64", epsilon=1e-3)
    case = _ad_hoc("ones", config, (2, 3, 2, 4), steps=(TRAIN, EVAL), dy=lambda rng, shape, i: np.ones(shape))
    train, infer = _adapter(cls).run(case, "cpu")
    np.testing.assert_allclose(train["dx"], 0.0, atol=1e-12)
    np.testing.assert_allclose(train["dgamma"], 0.0, atol=1e-12)
    np.testing.assert_array_equal(train["dbeta"], np.full(4, 12.0))
    gain = case.initial_state.gamma / np.sqrt(case.steps[0].expected["running_var"] + 1e-3)
    np.testing.assert_allclose(infer["dx"], np.broadcast_to(gain, (2, 3, 2, 4)), rtol=1e-12)


@TORCH
@pytest.mark.parametrize("cls", ADAPTERS)
def test_gradients_keep_the_input_layout_and_dtypes(cls):
    """Mixed precision: dx in the float16 input dtype and layout, dgamma / dbeta in float32 params."""
    config = Config(channel_axis=2, input_dtype="float16", param_dtype="float32")
    results = _adapter(cls).run(_ad_hoc("mixed", config, (3, 2, 5, 4)), "cpu")[0]
    assert (results["dx"].shape, results["dx"].dtype) == ((3, 2, 5, 4), np.float16)
    assert (results["dgamma"].shape, results["dgamma"].dtype) == ((5,), np.float32)
    assert results["dbeta"].dtype == np.float32


@TORCH
@pytest.mark.parametrize("cls", ADAPTERS)
def test_forward_only_steps_record_no_graph(cls, monkeypatch):
    """Only the step with dy runs autograd; nothing accumulates in the cached module's .grad."""
    calls = []
    grad = torch().autograd.grad
    monkeypatch.setattr(torch().autograd, "grad", lambda *a, **k: calls.append(1) or grad(*a, **k))
    case = _ad_hoc("second_only", Config(channel_axis=1), (4, 3), steps=(TRAIN, EVAL),
                   dy=lambda rng, shape, i: rng.normal(size=shape) if i == 1 else None)
    adapter = _adapter(cls)
    first, second = adapter.run(case, "cpu")
    assert "dx" not in first and "dx" in second and len(calls) == 1
    for module in getattr(adapter, "_modules", {}).values():
        assert module.weight.grad is None
    assert judge(adapter, case, "cpu").status == "pass"


class _ConstantStatisticsBackward(TorchFunctionalAdapter):
    """Mutant: the right forward, but dx of an eval-mode call fed the batch moments as constants."""

    def _step(self, case, params, step, device):
        out = super()._step(case, params, step, device)
        t, config = torch(), case.config
        x = t.tensor(step.x, dtype=t.float32).requires_grad_()
        mean, var = x.detach().mean(0), x.detach().var(0, unbiased=False)
        with t.enable_grad():  # run() holds autograd off outside the steps with dy
            y = t.nn.functional.batch_norm(x, mean, var, params.weight, params.bias, training=False,
                                           eps=config.effective_epsilon)
            out["dx"] = t.autograd.grad(y, x, t.tensor(step.dy, dtype=t.float32))[0].numpy()
        return out


@TORCH
def test_a_backward_that_treats_the_batch_moments_as_constants_fails():
    verdict = judge(_ConstantStatisticsBackward(), _case("rank2_nc_train"), "cpu")
    assert verdict.status == "fail"
    assert {m["output"] for m in verdict.mismatches} == {"dx"}
