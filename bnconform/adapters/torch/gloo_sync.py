"""torch's synchronized BN run for real on R replica processes joined in a gloo process group.

Two rows share one runner (the replica pool, the scatter of samples and the gather of results);
only the layer and the device differ:

* ``torch.gloo_sync`` (cpu) -- a CPU REPRODUCTION of torch.nn.SyncBatchNorm's combination rule,
  not SyncBatchNorm itself (which refuses CPU tensors). Each rank runs nn.SyncBatchNorm's
  forward() without its GPU check, i.e. torch's own SyncBatchNorm autograd Function
  (torch/nn/modules/_functions.py): per rank ``batch_norm_stats`` (mean, invstd) and its count,
  ``all_gather`` of [mean, invstd, count] over the gloo group, empty ranks (count 0) masked out,
  ``batch_norm_gather_stats_with_counts`` (global mean/invstd and the running update) and
  ``batch_norm_elemt``; its backward ``batch_norm_backward_reduce`` (per rank sum_dy, sum_dy_xmu,
  grad_weight, grad_bias), ``all_reduce`` SUM of [sum_dy, sum_dy_xmu] over the gloo group (an
  empty rank all-reduces zeros) and ``batch_norm_backward_elemt`` with the gathered counts. Those
  five ops have no CPU kernel in torch 2.13; they run as CPU ports of their CUDA kernels,
  registered with torch.library in the worker processes only (:mod:`.sync_kernels`). Everything
  else -- the Function's forward and backward, all_gather and all_reduce on gloo, the masking, the
  count dtype, autograd, the module's counter and momentum logic -- is torch's code.
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
synchronized over, as reported by every rank.

Gradients (training steps, i.e. batch statistics; ``gradients={"batch"}``): a step with dy gives
each rank its rows of dy; the rank runs ``loss = (y * dy_r).sum(); loss.backward()`` through torch's
autograd, which calls the SyncBatchNorm Function's backward on every rank at once: its all_reduce
of sum_dy / sum_dy_xmu really crosses the R gloo processes (an empty rank takes part with zeros),
so dx is the gradient of the GLOBAL loss sum_r sum(dy_r * y_r). dx = each rank's x.grad (zeros on
an empty rank), concatenated in rank order; dgamma / dbeta = weight.grad / bias.grad all-reduced
with SUM over the group on the ranks (DistributedDataParallel's all-reduce, without its division
by the world size: the model's parameter gradient is that of the summed loss), the same on every
rank. Considered and not taken: a differentiable ``torch.distributed.nn.functional.all_reduce`` of
the moments around F.batch_norm would be autodiff through another forward (plain all-reduced sums,
not SyncBatchNorm's all_gather / Chan merge), i.e. not torch's synchronized BN. Upstream:
torch/nn/modules/_functions.py (SyncBatchNorm.backward), aten/src/ATen/native/cuda/Normalization.cuh
(the two backward kernels), torch/nn/parallel/distributed.py (DDP averages gradients).
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
# replicated cases (one replica is torch.nn's row), any R from 2 to 8 and any split; gradients of
# the synchronized training call (the eval call runs per rank and is not claimed here).
SYNC_CAPABILITIES = replace(
    TORCH_CAPABILITIES, separate_scale_center=False, step_kinds=frozenset({("batch", True), ("running", False)}),
    gradients=frozenset({"batch"}), extensions=frozenset({"replicas"}), unreplicated=False,
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
    """The case as replica ``rank`` holds it: each step's x (and dy) cut to its samples, no
    expectations."""
    def local(step):
        start, end = replica_bounds(step.replica_sizes)[rank]
        dy = None if step.dy is None else step.dy[start:end]
        return replace(step, x=step.x[start:end], dy=dy, expected={}, tolerance={})
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


REPLICATED_KEYS = ("running_mean", "running_var", "num_updates", "dgamma", "dbeta")  # equal on every rank


def merged_step(answers: list[dict], i: int) -> dict:
    """Step ``i``: y (and dx) concatenated in rank order; the state and the all-reduced parameter
    gradients every rank holds (rank 0's, after checking they agree); the group size."""
    steps = [a["steps"][i] for a in answers]
    shared = {key: same_on_every_rank(steps, key, i) for key in REPLICATED_KEYS if key in steps[0]}
    sizes = {a["world_size"] for a in answers}
    if len(sizes) != 1:
        raise RuntimeError(f"Expected: one process-group size on every replica. Received: {sorted(sizes)}")
    rows = {key: np.concatenate([s[key] for s in steps], axis=0) for key in ("y", "dx") if key in steps[0]}
    return {**rows, **shared, "replicas": sizes.pop()}


def same_on_every_rank(steps: list[dict], key: str, i: int):
    """Rank 0's ``key`` of step ``i``; raises when another rank holds a different value."""
    values = [np.asarray(s[key]) for s in steps]
    if not all(np.array_equal(values[0], v, equal_nan=True) for v in values[1:]):
        raise RuntimeError(f"step {i}: Expected: every replica holds the same {key} after the step. "
                           f"Received: {[v.tolist() for v in values]}")
    return steps[0][key]


class TorchGlooSyncAdapter(_ReplicatedTorchAdapter):
    """A CPU reproduction of torch.nn.SyncBatchNorm's cross-replica rule on R gloo processes."""

    name = "torch.gloo_sync"
    device_kinds = ("cpu",)
    notes = ("CPU reproduction of torch.nn.SyncBatchNorm's rule, not SyncBatchNorm itself: R gloo processes run "
             "torch's SyncBatchNorm Function via nn.SyncBatchNorm.forward minus its GPU check; batch_norm_stats, "
             "batch_norm_gather_stats_with_counts, batch_norm_elemt and the backward's batch_norm_backward_reduce / _elemt "
             "have no CPU kernel in torch 2.13 and run as CPU ports of their CUDA kernels (var_mean for the Welford "
             "stats); gradients by loss.backward() on every rank, dgamma/dbeta all-reduced with SUM")
    speed_note = "a persistent pool of 8 gloo processes started on the first replicated case; each case is one round trip"


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
