"""torch.nn+folded: the BatchNorm really is folded away (one convolution, no BatchNorm left, weight
and bias = fuse_conv_bn_weights' w' and b'), the folded module is what runs, and it passes a case."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import in_framework_process, requires

pytestmark = [requires("torch"), *in_framework_process("torch")]

import torch  # noqa: E402

from bnconform.adapters.torch import folded  # noqa: E402
from bnconform.caseformat.validation import load_case  # noqa: E402
from bnconform.judging.judge import judge  # noqa: E402

CASES = Path(__file__).resolve().parent.parent / "cases"


def _case(name: str):
    return load_case(CASES / f"{name}.json")


@pytest.mark.parametrize("rank", [2, 3, 4, 5])
def test_fold_leaves_one_convolution_carrying_the_batch_norm(rank):
    bn = getattr(torch.nn, {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}[rank])(3).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.5, -2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
        bn.running_mean.copy_(torch.tensor([1.0, -1.0, 4.0]))
        bn.running_var.copy_(torch.tensor([0.25, 4.0, 9.0]))
    fused = folded.fold(folded.identity_conv(rank, 3, torch.float32, "cpu"), bn)
    kinds = [type(m).__name__ for m in fused.modules()]
    assert not any("BatchNorm" in kind for kind in kinds), kinds
    assert sum(isinstance(m, torch.nn.modules.conv._ConvNd) for m in fused.modules()) == 1, kinds
    inv = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(fused[0].weight.detach().reshape(-1), inv.detach(), rtol=1e-6, atol=0)
    torch.testing.assert_close(fused[0].bias.detach(), (bn.bias - bn.running_mean * inv).detach(), rtol=1e-6, atol=1e-7)


def test_the_folded_module_is_what_runs_and_the_case_passes(monkeypatch):
    ran = []
    real_fold = folded.fold
    monkeypatch.setattr(folded, "fold", lambda conv, bn: ran.append(real_fold(conv, bn)) or ran[-1])
    verdict = judge(folded.TorchFoldedAdapter(), _case("formulas/rank4_nchw_eval"), "cpu")
    assert verdict.status == "pass", verdict.detail
    assert len(ran) == 1 and isinstance(ran[0][0], torch.nn.Conv2d) and isinstance(ran[0][1], torch.nn.Identity)


def test_state_reaches_the_fold_and_a_wrong_state_fails():
    from dataclasses import replace

    case = _case("formulas/rank2_nc_eval")
    adapter = folded.TorchFoldedAdapter()
    assert judge(adapter, case, "cpu").status == "pass"
    state = case.initial_state
    wrong = replace(case, initial_state=replace(state, running_var=state.running_var * 4.0))
    assert judge(adapter, wrong, "cpu").status == "fail"


def test_half_input_raises_the_declared_error():
    verdict = judge(folded.TorchFoldedAdapter(), _case("formulas/float16_nchw_eval"), "cpu")
    assert verdict.status == "deviation" and verdict.deviations == ["folded-conv-refuses-half-input"], verdict.detail


def test_non_finite_value_stays_in_its_channel():
    """The depthwise identity conv keeps channels apart, as BN does (a full identity matrix would not)."""
    verdict = judge(folded.TorchFoldedAdapter(), _case("degenerate/pos_inf_in_one_channel"), "cpu")
    assert verdict.status == "pass", verdict.detail
