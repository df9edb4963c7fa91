"""torch.nn+compile: the module call really is torch.compile's program, and the checks would catch
a compiled path that ran eagerly or in the wrong mode (skipped when torch is not installed).

Compiling costs ~2-30 s per program (the first in a process pays Inductor's start-up), so these
tests share one adapter and the few programs of one case; the whole row runs in
``bnconform run --backend torch.nn+compile``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import in_framework_process, requires

pytestmark = [requires("torch"), *in_framework_process("torch")]

from bnconform.adapters.torch import compiled  # noqa: E402
from bnconform.adapters.torch.compiled import TorchCompiledModuleAdapter  # noqa: E402
from bnconform.caseformat.validation import load_case  # noqa: E402
from bnconform.judging.judge import judge  # noqa: E402

CASES = Path(__file__).resolve().parent.parent / "cases"
# train, train, eval on |mean| = 1e4 x spread: Inductor's Welford variance shows in running_var
CANCELLATION = "degenerate/cancellation_float32_1e4"


def _case(name: str):
    return load_case(CASES / f"{name}.json")


@pytest.fixture(scope="module")
def adapter():
    return TorchCompiledModuleAdapter()


class _EagerCall(TorchCompiledModuleAdapter):
    """A broken compiled row: the module runs eagerly, under the compiled row's declarations."""

    name = "test.torch.nn+eager_call"

    def _forward(self, module, x):
        return module(x)


class _AlwaysTraining(TorchCompiledModuleAdapter):
    """A broken compiled row: the compiled program always runs in training mode."""

    name = "test.torch.nn+always_training"

    def __init__(self, shared: TorchCompiledModuleAdapter):
        super().__init__()
        self._modules, self._compiled = shared._modules, shared._compiled  # reuse the compiled programs

    def _forward(self, module, x):
        module.train(True)
        return super()._forward(module, x)


def test_the_module_call_is_a_compiled_program():
    """Dynamo's programs are shared by modules with equal attributes, so its caches are emptied
    first: the case must then compile a training and an inference graph."""
    import torch

    torch._dynamo.reset()
    fresh, case, counters = TorchCompiledModuleAdapter(), _case(CANCELLATION), torch._dynamo.utils.counters
    graphs = counters["stats"]["unique_graphs"]
    verdict = judge(fresh, case, "cpu")
    assert (verdict.status, verdict.deviations) == ("deviation", ["welford-float32-variance"]), verdict.detail
    assert type(fresh._compiled[fresh._module(case, "cpu")].compiled).__name__ == "OptimizedModule"
    assert counters["stats"]["unique_graphs"] >= graphs + 2  # a training and an inference program


def test_the_functional_call_is_compiled_too():
    """torch.functional+compile: the same Welford loss, where eager F.batch_norm passes the case."""
    from bnconform.adapters.torch.functional import TorchFunctionalAdapter

    verdict = judge(compiled.TorchCompiledFunctionalAdapter(), _case(CANCELLATION), "cpu")
    assert (verdict.status, verdict.deviations) == ("deviation", ["welford-float32-variance"]), verdict.detail
    assert judge(TorchFunctionalAdapter(), _case(CANCELLATION), "cpu").status == "pass"


def test_an_eager_call_fails_the_compiled_declarations():
    """torch.nn's kernel computes the two-pass variance: the declared Welford loss is not observed."""
    verdict = judge(_EagerCall(), _case(CANCELLATION), "cpu")
    assert verdict.status == "fail" and "welford-float32-variance" in verdict.detail, verdict.detail


def test_a_program_in_the_wrong_mode_fails(adapter):
    judge(adapter, _case(CANCELLATION), "cpu")  # compiles both modes (cached when run after the test above)
    verdict = judge(_AlwaysTraining(adapter), _case(CANCELLATION), "cpu")
    assert verdict.status == "fail" and "step 2" in verdict.detail, verdict.detail


@pytest.mark.parametrize("name, deviation", [
    ("momentum/cumulative_bessel_5steps", "cumulative-rule-not-compilable"),
    ("degenerate/n1_rank2_train", "single-value-per-channel-raises-traced"),
])
def test_what_dynamo_refuses_while_tracing_is_declared(adapter, name, deviation):
    verdict = judge(adapter, _case(name), "cpu")
    assert (verdict.status, verdict.deviations) == ("deviation", [deviation]), verdict.detail


@pytest.mark.parametrize("name, selected", [
    ("gradients/bfloat16_train", True), ("gradients/float16_train", True), ("gradients/float64_train", False),
    ("gradients/bfloat16_eval", False), ("gradients/batch_no_update_nc_bfloat16", False)])
def test_rounded_saved_moments_are_predicted_where_they_move_dgamma(name, selected):
    assert compiled._half_saved_moments_move_dgamma(_case(name), "cpu") is selected


@pytest.mark.parametrize("name, selected", [
    ("degenerate/pos_inf_in_one_channel", True), ("degenerate/n0_rank2_train", False),
    ("momentum/decay_0.9_bessel_3steps", False)])
def test_infinite_batch_means_are_selected(name, selected):
    assert compiled._updates_from_infinite_mean(_case(name), "cpu") is selected


def test_row_keeps_only_the_eager_findings_it_shows():
    names = {d.name for d in TorchCompiledModuleAdapter.deviations}
    assert "empty-batch-counted" in names and "half-parameters-half-batch-moments" not in names
    assert all(d.link.startswith("https://github.com/pytorch/pytorch/") for d in TorchCompiledModuleAdapter.deviations)
    assert "cuda-nocudnn" not in TorchCompiledModuleAdapter().devices()  # Inductor never calls cuDNN's BN
