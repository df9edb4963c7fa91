"""torch's synchronized BN run for real on R replica processes joined in a gloo process group.

Two rows share one runner (the replica pool, the scatter of samples and the gather of results);
only the layer and the device differ:

* ``torch.gloo_sync`` (cpu) -- a CPU REPRODUCTION of torch.nn.SyncBatchNorm's combination rule,
  not SyncBatchNorm itself (which refuses CPU tensors). Each rank runs nn.SyncBatchNorm's
  forward() without its GPU check, i.e. torch's own SyncBatchNorm autograd Function
  (torch/nn/modules/_functions.py): per rank ``batch_norm_stats`` (mean, invstd) and its count,
  ``all_gather`` of [mean, invstd, count] over the gloo group, empty ranks (count 0) masked out,
  ``batch_norm_gather_stats_with_counts`` (global mean/invstd and the running update) and
  ``batch_norm_elemt``. Those three ops have no CPU kernel in torch 2.13; they run as CPU ports
  of their CUDA kernels, registered with torch.library in the worker processes only
  (:mod:`.sync_kernels`). Everything else -- the Function, all_gather on gloo, the masking, the
  count dtype, the module's counter and momentum logic -- is torch's code.
* ``torch.nn.SyncBatchNorm`` (cuda) -- torch.nn.SyncBatchNorm itself, rank r on cuda:(r mod the
  GPU count), over the same gloo process group (SyncBatchNorm takes its gloo branch). Without a
  GPU its cells are unavailable: torch 2.13's forward() raises ValueError("SyncBatchNorm
  expected input tensor to be on GPU or XPU or privateuseone") for a CPU input.

Translation (canonical knob -> SyncBatchNorm):

==========================  ==========================================================
replica_sizes (n_0..n_R-1)  rank r of a process group of R ranks holds samples
                            [n_0 + .. + n_(r-1), .. + n_r) of x; y is concatenated back
channel_axis                moved to 1 and back on each rank (movedim)
epsilon (+ epsilon_floor)   eps = max(epsilon, epsilon_floor) (inside the square root)
scale and center            affine=True / affine=False (one flag)
rule ema, decay d           momentum = 1 - d; rule cumulative: momentum=None
normalize_with batch        train(): synchronized statistics, running stats updated
normalize_with running      eval(): F.batch_norm with the running stats on each rank
==========================  ==========================================================

Outputs: y, the running statistics and num_batches_tracked of rank 0 (every rank must hold the
same, else the run raises), and ``replicas`` = the size of the process group the layer
synchronized over, as reported by every rank. Forward only: the backward ops
(batch_norm_backward_reduce / _elemt) are not ported, so no gradients.
"""

from __future__ import annotations

import builtins
from dataclasses import replace

import numpy as np

from ...caseformat import model
from ...judging.selectors import updates_on_empty_batch
from ..base import Deviation, Mismatches
from .common import TORCH_CAPABILITIES, TorchAdapter, torch

ISSUE_EMPTY_BATCH = "https://github.com/pytorch/pytorch/issues/36530"
GPU_CHECK = ("torch.nn.SyncBatchNorm needs GPU tensors: in torch 2.13 its forward() raises ValueError(\"SyncBatchNorm "
             "expected input tensor to be on GPU or XPU or privateuseone\") when input.device.type is not one of "
             "cuda, hpu, xpu or the privateuse1 backend (torch/nn/modules/batchnorm.py)")

# torch's conventions (eps inside the root, Bessel running variance with the GLOBAL count,
# plain EMA or the cumulative average), one affine flag, train() always updates, only
# replicated cases (one replica is torch.nn's row), any R from 2 to 8 and any split.
SYNC_CAPABILITIES = replace(
    TORCH_CAPABILITIES, separate_scale_center=False, step_kinds=frozenset({("batch", True), ("running", False)}),
    gradients=frozenset(), extensions=frozenset({"replicas"}), unreplicated=False,
    replica_counts=frozenset(range(2, 9)))


SYNC_DEVIATIONS = (
    Deviation(
        name="all-replicas-empty-updates-running-stats",
        kind="defect",
        applies=updates_on_empty_batch,
        behaviour=Mismatches(("running_mean", "running_var", "num_updates"),
                             "running_mean decays toward 0, running_var is scaled by 1 - momentum, the counter counts it"),
        explanation="when every replica is empty, SyncBatchNorm masks every gathered row out and "
                    "batch_norm_gather_stats_with_counts (Normalization.cuh, batch_norm_reduce_statistics_kernel) "
                    "runs its merge loop zero times (n = 0, mean 0, M2 0) but still writes running_mean = "
                    "(1 - m) r + m * 0 and running_var = (1 - m) r + m * 0 / (0 - 1); forward() has already counted "
                    "the batch. The issue that added empty-batch support asked that the running stats stay put when "
                    "the total batch is 0; the model keeps the state unchanged. Seen here through the CPU port of "
                    "that kernel (line for line); on CUDA it is the kernel itself",
        link=ISSUE_EMPTY_BATCH,
    ),
)


class _ReplicatedTorchAdapter(TorchAdapter):
    """Scatter each step's samples over R pool ranks, run the layer there, gather the results."""

    capabilities = SYNC_CAPABILITIES
    deviations = SYNC_DEVIATIONS

    def __init__(self):
        self.last_ranks: list[dict] = []  # rank, pid and device of each replica of the last run

    def framework_defaults(self):
        from .common import signature_defaults

        return signature_defaults(torch().nn.SyncBatchNorm.__init__)

    def run(self, case: model.Case, device: str) -> list[dict]:
        from .replica_pool import pool

        replicas = len(case.steps[0].replica_sizes)
        # the device names the worker's layer too: "cpu" the gloo reproduction, "cuda" SyncBatchNorm
        requests = [{"kind": device, "case": local_case(case, rank)} for rank in range(replicas)]
        answers = pool().run(replicas, requests)
        raise_first_error(answers)
        self.last_ranks = [{k: a[k] for k in ("rank", "pid", "device", "world_size")} for a in answers]
        return [merged_step(answers, i) for i in range(len(case.steps))]


def replica_bounds(sizes) -> list[tuple[int, int]]:
    """[start, end) along axis 0 of each replica: consecutive blocks of the given sizes."""
    ends = np.cumsum(sizes, dtype=np.int64)
    return [(int(end - size), int(end)) for size, end in zip(sizes, ends)]


def local_case(case: model.Case, rank: int) -> model.Case:
    """The case as replica ``rank`` holds it: each step's x cut to its samples, no expectations."""
    def local(step):
        start, end = replica_bounds(step.replica_sizes)[rank]
        return replace(step, x=step.x[start:end], expected={}, tolerance={})
    return replace(case, steps=[local(s) for s in case.steps])


def raise_first_error(answers: list[dict]) -> None:
    """Re-raise the first rank's exception under its own class name (builtin where it is one),
    so a declared ``Raises`` deviation can match it."""
    for rank, answer in enumerate(answers):
        if "error" in answer:
            cls = getattr(builtins, answer["error"], None)
            if not (isinstance(cls, type) and issubclass(cls, Exception)):
                cls = type(answer["error"], (RuntimeError,), {})
            raise cls(f"{answer['message']} [replica rank {rank}]\n{answer['trace']}")


def merged_step(answers: list[dict], i: int) -> dict:
    """Step ``i``: y concatenated in rank order; the state every rank holds; the group size."""
    steps = [a["steps"][i] for a in answers]
    for key in ("running_mean", "running_var", "num_updates"):
        values = [np.asarray(s[key]) for s in steps]
        if not all(np.array_equal(values[0], v, equal_nan=True) for v in values[1:]):
            raise RuntimeError(f"step {i}: Expected: every replica holds the same {key} after the step. "
                               f"Received: {[v.tolist() for v in values]}")
    sizes = {a["world_size"] for a in answers}
    if len(sizes) != 1:
        raise RuntimeError(f"Expected: one process-group size on every replica. Received: {sorted(sizes)}")
    return {"y": np.concatenate([s["y"] for s in steps], axis=0), "running_mean": steps[0]["running_mean"],
            "running_var": steps[0]["running_var"], "num_updates": steps[0]["num_updates"], "replicas": sizes.pop()}


class TorchGlooSyncAdapter(_ReplicatedTorchAdapter):
    """A CPU reproduction of torch.nn.SyncBatchNorm's cross-replica rule on R gloo processes."""

    name = "torch.gloo_sync"
    device_kinds = ("cpu",)
    notes = ("CPU reproduction of torch.nn.SyncBatchNorm's rule, not SyncBatchNorm itself: R gloo processes run "
             "torch's SyncBatchNorm Function via nn.SyncBatchNorm.forward minus its GPU check; batch_norm_stats, "
             "batch_norm_gather_stats_with_counts and batch_norm_elemt have no CPU kernel in torch 2.13 and run as "
             "CPU ports of their CUDA kernels (var_mean for the Welford stats)")
    speed_note = "a persistent pool of 8 gloo processes started on the first replicated case; each case is one round trip"

    def devices(self) -> list[str]:
        return ["cpu"]


class TorchSyncBatchNormAdapter(_ReplicatedTorchAdapter):
    """torch.nn.SyncBatchNorm itself, rank r on cuda:(r mod GPUs), over the gloo replica pool."""

    name = "torch.nn.SyncBatchNorm"
    device_kinds = ("cuda",)
    device_note = GPU_CHECK
    notes = ("torch.nn.SyncBatchNorm on R processes of a gloo group, rank r on cuda:(r mod GPUs) (ranks share "
             "a GPU when there are fewer GPUs than replicas); the same runner as torch.gloo_sync")

    def unavailable_reason(self) -> str | None:
        reason = super().unavailable_reason()
        if reason is None and not torch().cuda.is_available():
            return f"torch.cuda.is_available() is False (torch {torch().__version__}); {GPU_CHECK}"
        return reason

    def devices(self) -> list[str]:
        return ["cuda"] if torch().cuda.is_available() else []
