"""torch's synchronized BN rows: torch.gloo_sync really runs each replicated step on R separate
processes of one gloo group (the test checks the processes it saw), its backward is synchronized
across them (dx against the case file, where a per-replica backward would miss), its CPU ports of
the CUDA-only kernels compute what their CUDA kernels compute (checked against NumPy on the pooled
samples and against torch's CPU batch_norm gradients), torch.nn.SyncBatchNorm is unavailable here with torch's own reason, and a crash or hang
in the replica pool costs one run, not the host, and leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import in_framework_process, requires

pytestmark = [requires("torch"), *in_framework_process("torch")]

from bnconform.adapters.torch import replica_pool, sync_kernels  # noqa: E402
from bnconform.adapters.torch.gloo_sync import (  # noqa: E402
    GPU_CHECK, TorchGlooSyncAdapter, TorchSyncBatchNormAdapter, local_case,
)
from bnconform.judging.capabilities import unsupported_reason  # noqa: E402
from bnconform.execution.plan import Cell, presettle  # noqa: E402
from bnconform.judging.judge import judge  # noqa: E402
from bnconform.caseformat.validation import load_case  # noqa: E402

CASES = Path(__file__).resolve().parent.parent / "cases"


def _case(name: str):
    return load_case(CASES / f"{name}.json")


@pytest.mark.parametrize("name", ["replicas/r2_unequal_far_means_train", "replicas/r4_one_empty_train",
                                  "replicas/r8_unequal_two_empty_train"])
def test_each_step_runs_on_R_distinct_processes_of_an_R_rank_group(name):
    adapter, case = TorchGlooSyncAdapter(), _case(name)
    replicas = len(case.steps[0].replica_sizes)
    verdict = judge(adapter, case, "cpu")
    assert verdict.status == "pass", verdict.detail
    assert "replicas" in verdict.compared
    results = adapter.run(case, "cpu")
    assert [r["replicas"] for r in results] == [replicas] * len(case.steps)
    seen = adapter.last_ranks
    assert [r["rank"] for r in seen] == list(range(replicas))
    assert {r["world_size"] for r in seen} == {replicas}
    pids = {r["pid"] for r in seen}
    assert len(pids) == replicas and os.getpid() not in pids


def test_each_replica_holds_only_its_own_samples():
    case = _case("replicas/r4_unequal_train")
    sizes = case.steps[0].replica_sizes
    parts = [local_case(case, rank).steps[0].x for rank in range(len(sizes))]
    assert [p.shape[0] for p in parts] == list(sizes)
    np.testing.assert_array_equal(np.concatenate(parts), case.steps[0].x)
    assert all(not local_case(case, 0).steps[i].expected for i in range(len(case.steps)))


def test_every_replica_empty_moves_the_running_stats_as_the_gather_kernel_says():
    """SyncBatchNorm's merge loop runs zero times: mean 0, M2 0, n 0, and the update still runs."""
    case = _case("replicas/r2_all_empty_train")
    verdict = judge(TorchGlooSyncAdapter(), case, "cpu")
    assert verdict.status == "deviation", verdict.detail
    assert verdict.deviations == ["all-replicas-empty-updates-running-stats"]
    first = TorchGlooSyncAdapter().run(case, "cpu")[0]
    momentum, state = 1.0 - case.config.running_stats.decay, case.initial_state
    np.testing.assert_allclose(first["running_mean"], (1 - momentum) * state.running_mean, rtol=1e-6)
    np.testing.assert_allclose(first["running_var"], (1 - momentum) * state.running_var, rtol=1e-6)
    assert first["num_updates"] == 1 and first["y"].shape == (0, case.channels)


def test_unreplicated_cases_are_left_to_torch_nn():
    case = _case("momentum/decay_0.9_bessel_3steps")
    reason = unsupported_reason(TorchGlooSyncAdapter.capabilities, case, "cpu", "torch.gloo_sync")
    assert reason and "replica_sizes" in reason


# --- gradients: loss.backward() on every rank, SyncBatchNorm's all_reduce across the processes -----

def _per_replica_backward_dx(case) -> np.ndarray:
    """dx if each replica reduced sum(dy) and sum(dy * xhat) over its OWN samples only (the forward
    synchronized, the backward not): what the test must tell apart from the synchronized one."""
    step, gamma = case.steps[0], case.initial_state.gamma
    x, dy = step.x.astype(np.float64), step.dy.astype(np.float64)
    mean, var = x.mean(axis=0), x.var(axis=0)
    xhat, parts = (x - mean) / np.sqrt(var + case.config.epsilon), []
    for start, end in zip(np.cumsum((0,) + step.replica_sizes[:-1]), np.cumsum(step.replica_sizes)):
        d, h = dy[start:end], xhat[start:end]
        parts.append(gamma / np.sqrt(var + case.config.epsilon) * (d - d.mean(axis=0) - h * (d * h).mean(axis=0)))
    return np.concatenate(parts)


def test_dx_is_the_synchronized_backward_not_a_per_replica_one():
    """Unequal replicas with far-apart means: dx matches the case file's expected dx (the gradient
    of the global loss), which a per-replica backward misses by far more than the tolerance."""
    case = _case("gradients/replicas_r2_unequal_far_means_train")
    step = case.steps[0]
    expected, tol = step.expected["dx"], step.tolerance["dx"]
    assert np.abs(_per_replica_backward_dx(case) - expected).max() > 100 * (tol["atol"] + tol["rtol"])
    got = TorchGlooSyncAdapter().run(case, "cpu")[0]
    np.testing.assert_allclose(got["dx"], expected, rtol=tol["rtol"], atol=tol["atol"])
    for key in ("dgamma", "dbeta"):  # summed over the replicas, not one replica's share
        np.testing.assert_allclose(got[key], step.expected[key], rtol=step.tolerance[key]["rtol"],
                                   atol=step.tolerance[key]["atol"])


def test_an_empty_replica_takes_part_in_the_backward():
    """R = 4 with one empty replica: every rank all-reduces (no hang), the empty rank's dx is empty."""
    case = _case("gradients/replicas_r4_one_empty_nhwc_train")
    verdict = judge(TorchGlooSyncAdapter(), case, "cpu")
    assert verdict.status == "pass", verdict.detail
    assert {"dx", "dgamma", "dbeta", "replicas"} <= set(verdict.compared)
    assert 0 in case.steps[0].replica_sizes


def test_backward_kernels_give_torch_cpu_batch_norm_gradients():
    """One replica holding the whole batch: the ported backward reduce + elemt equal the gradients
    of torch's own CPU F.batch_norm (training) on the same batch, in float64."""
    torch = _torch()
    rng = np.random.default_rng(2)
    x, dy, weight = (torch.tensor(rng.normal(size=s)) for s in ((5, 3, 4), (5, 3, 4), (3,)))
    mean, invstd = sync_kernels.batch_norm_stats(x, 1e-5)
    sum_dy, sum_dy_xmu, dgamma, dbeta = sync_kernels.batch_norm_backward_reduce(dy, x, mean, invstd, weight,
                                                                               True, True, True)
    dx = sync_kernels.batch_norm_backward_elemt(dy, x, mean, invstd, weight, sum_dy, sum_dy_xmu,
                                                torch.tensor([[20]], dtype=torch.int32))
    leaves = [t.clone().requires_grad_() for t in (x, weight, torch.zeros(3, dtype=torch.float64))]
    y = torch.nn.functional.batch_norm(leaves[0], None, None, *leaves[1:], True, 0.1, 1e-5)
    expected = torch.autograd.grad(y, leaves, grad_outputs=dy)
    for got, want in zip((dx, dgamma, dbeta), expected):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-10, atol=1e-12)


# --- the CPU ports of batch_norm_stats / _gather_stats_with_counts / _elemt ------------------------

def _torch():
    import torch

    return torch


def test_stats_are_the_biased_moments_and_invstd():
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(5, 3, 4))
    mean, invstd = sync_kernels.batch_norm_stats(_torch().tensor(x), 1e-3)
    np.testing.assert_allclose(mean.numpy(), x.mean(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_allclose(invstd.numpy(), 1 / np.sqrt(x.var(axis=(0, 2)) + 1e-3), rtol=1e-12)
    _, zero = sync_kernels.batch_norm_stats(_torch().ones(2, 3, dtype=_torch().float64), 0.0)
    assert zero.tolist() == [0.0, 0.0, 0.0]  # InvStd: 0 for var == eps == 0, not inf


def test_gather_gives_the_pooled_moments_and_a_global_bessel_update():
    rng, torch = np.random.default_rng(1), _torch()
    parts = [rng.normal(m, 1.0, size=(n, 2)) for m, n in ((-4.0, 5), (1.0, 1), (6.0, 3))]
    stats = [sync_kernels.batch_norm_stats(torch.tensor(p), 1e-5) for p in parts]
    running_mean, running_var = torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    mean, invstd = sync_kernels.batch_norm_gather_stats_with_counts(
        torch.tensor(parts[0]), torch.stack([m for m, _ in stats]), torch.stack([s for _, s in stats]),
        running_mean, running_var, 0.25, 1e-5, torch.tensor([5.0, 1.0, 3.0], dtype=torch.float64))
    pooled = np.concatenate(parts)
    np.testing.assert_allclose(mean.numpy(), pooled.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(invstd.numpy(), 1 / np.sqrt(pooled.var(axis=0) + 1e-5), rtol=1e-9)
    np.testing.assert_allclose(running_mean.numpy(), 0.75 + 0.25 * pooled.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(running_var.numpy(), 0.75 + 0.25 * pooled.var(axis=0, ddof=1), rtol=1e-9)


def test_elemt_normalizes_with_the_given_statistics():
    torch, x = _torch(), np.arange(12.0).reshape(2, 3, 2)
    mean, invstd, weight, bias = (np.array(v) for v in ([1.0, 2.0, 3.0], [0.5, 2.0, 1.0], [2.0, -1.0, 1.0],
                                                        [0.0, 1.0, -3.0]))
    y = sync_kernels.batch_norm_elemt(torch.tensor(x, dtype=torch.float32), torch.tensor(weight),
                                      torch.tensor(bias), torch.tensor(mean), torch.tensor(invstd), 1e-5)
    expected = (x - mean[:, None]) * invstd[:, None] * weight[:, None] + bias[:, None]
    assert y.dtype == torch.float32
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-6)


# --- torch.nn.SyncBatchNorm: unavailable without CUDA, with torch's reason ------------------------

def test_sync_batchnorm_refuses_cpu_with_the_quoted_message():
    """The quote in the row's reason is what the installed torch really raises for CPU input."""
    torch = _torch()
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        with pytest.raises(ValueError) as raised:
            torch.nn.SyncBatchNorm(3)(torch.ones(4, 3))
    finally:
        dist.destroy_process_group()
    assert str(raised.value) in GPU_CHECK


def test_sync_batchnorm_cells_are_unavailable_here_with_that_reason():
    if _torch().cuda.is_available():
        pytest.skip("a GPU is present: the row runs")
    cell = Cell(str(CASES / "replicas/r2_equal_train.json"), "replicas/r2_equal_train", "replicas",
                "torch.nn.SyncBatchNorm", "cuda")
    verdict = presettle(cell)
    assert verdict.status == "unavailable" and GPU_CHECK in verdict.detail
    assert GPU_CHECK in TorchSyncBatchNormAdapter().unavailable_reason()
    assert TorchSyncBatchNormAdapter().devices() == []


# --- the pool: a crash or a hang costs one run; nothing outlives the host -------------------------

def test_a_dead_replica_costs_one_run_and_the_next_starts_a_fresh_pool():
    adapter, case = TorchGlooSyncAdapter(), _case("replicas/r2_equal_train")
    old = replica_pool.pool()
    os.kill(old.pids[1], signal.SIGKILL)
    with pytest.raises(replica_pool.PoolError, match="rank 1"):
        adapter.run(case, "cpu")
    assert judge(adapter, case, "cpu").status == "pass"
    assert not set(replica_pool.pool().pids) & set(old.pids)


def test_a_hanging_replica_costs_one_run(monkeypatch):
    """Rank 0 alone enters the all_gather of a 2-rank group: it waits for rank 1 forever."""
    case, old = _case("replicas/r2_equal_train"), replica_pool.pool()
    start = time.monotonic()
    with old.awake([0]), pytest.raises(replica_pool.PoolError, match="did not run the case within 0.5 s"):
        old.connections[0].send({"kind": "cpu", "replicas": 2, "case": local_case(case, 0)})
        old._gather([0], 0.5, "run the case")
    assert time.monotonic() - start < 5 and not old.alive()
    assert judge(TorchGlooSyncAdapter(), case, "cpu").status == "pass"


def test_an_error_on_every_rank_keeps_the_pool():
    before = replica_pool.pool().pids
    with pytest.raises(AttributeError):
        from bnconform.adapters.torch.gloo_sync import raise_first_error

        raise_first_error(replica_pool.pool().run(2, [{"kind": "cpu", "case": None}] * 2))
    assert replica_pool.pool().pids == before


def test_the_pool_sleeps_between_cases_and_leaves_no_rendezvous_file():
    pool = replica_pool.pool()
    assert not Path(pool.directory).exists()
    assert _states_settle(pool.pids) == {"T"}  # stopped: its gloo threads do not wake
    assert judge(TorchGlooSyncAdapter(), _case("replicas/r4_bessel_update"), "cpu").status == "pass"
    assert _states_settle(pool.pids) == {"T"}


def test_a_killed_host_leaves_no_replica_process():
    """The host here imports no torch (only the pool's zygote does); SIGKILL it mid-life."""
    code = ("from bnconform.adapters.torch.replica_pool import pool; p = pool(); "
            "print(p.zygote.pid, *p.pids, flush=True); import time; time.sleep(60)")
    host = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in host.stdout.readline().split()]
    assert len(pids) == 1 + replica_pool.WORLD
    host.kill()
    host.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_running(p) for p in pids):
        time.sleep(0.05)
    assert not [p for p in pids if _running(p)]


def _state(pid: int) -> str:
    """The process state letter from /proc (R, S, T stopped, Z zombie; "" when gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except (FileNotFoundError, IndexError):
        return ""


def _states_settle(pids, seconds: float = 2.0) -> set[str]:
    """The processes' states once all are stopped, or after ``seconds`` (a group stop takes effect
    when each woken process is next scheduled, later on a busy machine)."""
    deadline = time.monotonic() + seconds
    while (states := {_state(p) for p in pids}) != {"T"} and time.monotonic() < deadline:
        time.sleep(0.02)
    return states


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    return _state(pid) not in ("", "Z")
