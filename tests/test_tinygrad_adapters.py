"""Fast checks of the tinygrad adapter's translation (skipped without tinygrad, or without the clang
its CPU device compiles every kernel with)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import in_framework_process, requires

pytestmark = [requires("tinygrad"), *in_framework_process("tinygrad"),
              pytest.mark.skipif(shutil.which(os.environ.get("CC", "clang")) is None,
                                 reason="tinygrad's CPU device needs clang on PATH")]

from bnconform.adapters.tinygrad import program_cache  # noqa: E402
from bnconform.adapters.tinygrad.nn import (  # noqa: E402
    TinygradBatchNormAdapter, channels_first_order, inverse,
)
from bnconform.judging.judge import judge  # noqa: E402
from bnconform.caseformat.validation import load_case  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "cases"


def _case(name: str):
    return load_case(CASES / f"{name}.json")


def test_importing_the_adapter_module_does_not_import_tinygrad():
    code = "import sys, bnconform.adapters.tinygrad.nn; print('tinygrad' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert json.loads(out.stdout.strip().lower()) is False


@pytest.mark.parametrize("rank, axis", [(2, 0), (3, 2), (4, 3), (5, 4), (4, 2)])
def test_channel_axis_moves_to_1_and_back(rank, axis):
    order = channels_first_order(rank, axis)
    assert order[1] == axis and sorted(order) == list(range(rank))
    shape = np.arange(2, 2 + rank)
    assert list(shape[order][inverse(order)]) == list(shape)


def test_decay_becomes_the_momentum_on_the_new_statistic():
    adapter, case = TinygradBatchNormAdapter(), _case("momentum/decay_0.9_bessel_3steps")
    assert adapter._module(case).momentum == pytest.approx(0.1)
    verdict = judge(adapter, case, "cpu")
    assert verdict.status == "pass", verdict.detail
    assert {"running_var", "num_updates"} <= set(verdict.compared)


def test_channels_last_float64_case_runs_in_float64():
    case = _case("formulas/float64_nhwc_train")
    results = TinygradBatchNormAdapter().run(case, "cpu")
    assert results[0]["y"].dtype == np.float64 and results[0]["y"].shape == case.steps[0].x.shape
    assert judge(TinygradBatchNormAdapter(), case, "cpu").status == "pass"


def test_gradients_of_training_then_inference_steps_pass():
    verdict = judge(TinygradBatchNormAdapter(), _case("gradients/train_train_eval_bessel"), "cpu")
    assert verdict.status == "pass", verdict.detail
    assert {"dx", "dgamma", "dbeta"} <= set(verdict.compared)


@pytest.mark.parametrize("name, deviation", [("degenerate/n1_rank2_train", "single-value-per-channel-raises"),
                                             ("degenerate/n0_rank2_train", "empty-batch-nan-running-stats"),
                                             ("formulas/float16_nc_train", "half-batch-statistics")])
def test_declared_deviations_are_observed(name, deviation):
    verdict = judge(TinygradBatchNormAdapter(), _case(name), "cpu")
    assert verdict.status == "deviation", verdict.detail
    assert deviation in verdict.deviations


def test_missing_clang_makes_the_backend_unavailable(monkeypatch):
    monkeypatch.setenv("CC", "no-such-clang-for-bnconform")
    reason = TinygradBatchNormAdapter().unavailable_reason()
    assert reason and "'no-such-clang-for-bnconform'" in reason and "apt-get install clang" in reason


def test_lowered_kernels_are_saved_and_read_back_as_the_same_programs(tmp_path, monkeypatch):
    TinygradBatchNormAdapter().run(_case("formulas/rank2_nc_train"), "cpu")
    from tinygrad.codegen import to_program_cache
    path = tmp_path / "programs.pkl"
    monkeypatch.setitem(program_cache._STATE, "cache", to_program_cache)
    monkeypatch.setitem(program_cache._STATE, "path", path)
    monkeypatch.setitem(program_cache._STATE, "known", set())
    program_cache.save()
    saved, whole = program_cache._read(path)
    assert whole and to_program_cache and saved.keys() == to_program_cache.keys()
    # UOps are hash-consed: a program read back is the very object tinygrad lowered for that key
    assert all(saved[key] is program for key, program in to_program_cache.items())


def test_program_log_keeps_its_complete_records_and_repairs_a_truncated_tail(tmp_path):
    path = tmp_path / "programs.pkl"
    path.write_bytes(pickle.dumps({"a": 1}) + pickle.dumps({"b": 2})[:-3])
    entries, whole = program_cache._read(path)
    assert entries == {"a": 1} and not whole
    program_cache._rewrite(path, entries)
    assert program_cache._read(path) == ({"a": 1}, True)
