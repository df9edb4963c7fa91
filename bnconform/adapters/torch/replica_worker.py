"""The replica processes of the torch replica pool: ``python -m bnconform.adapters.torch.replica_worker
WORLD STORE COUNTS FD...`` is the pool's zygote; each worker is rank ``rank`` of one gloo world.

The zygote imports torch once, then forks one worker per inherited socket fd (rank = position),
closes its copies and waits for them; a worker therefore starts with torch loaded (no import per
worker) and nothing of the host's ``__main__`` (multiprocessing's forkserver would re-import it).
:func:`serve` joins the gloo world through a FileStore, creates one subgroup per replica count
(ranks 0..R-1; every rank of the world takes part in creating each, as ``new_group`` requires),
says ``{"ready": pid}`` and then answers requests on its socket until EOF or ``None``.

A request is ``{"kind": "cpu" | "cuda", "replicas": R, "case": local case}``: the case's steps
hold only this rank's samples (the pool scattered them). The rank builds a SyncBatchNorm layer with
the case's initial state and process group R, runs the steps (train() for batch statistics,
eval() for running ones) and answers, per step, its local y, its running statistics and counter,
plus ``world_size`` = the size of the process group the layer synchronized over, its rank and
device. A step with dy (this rank's rows) also runs ``loss.backward()`` on every rank together
(:func:`_backward`) and answers its local dx and the group-summed dgamma / dbeta. An exception is
answered as ``{"error": type name, "message", "trace"}``.

* kind "cpu" (row torch.gloo_sync): :func:`gloo_sync_batch_norm`, nn.SyncBatchNorm's forward
  minus its GPU check, calling torch's own SyncBatchNorm Function with the CPU kernels of
  :mod:`.sync_kernels`;
* kind "cuda" (row torch.nn.SyncBatchNorm): torch.nn.SyncBatchNorm itself on cuda:(rank mod GPUs).

Orphans: the zygote and every worker ask Linux to SIGKILL them when their parent dies (host ->
zygote -> workers; SIGKILL, because the pool sits stopped between cases and a stopped process
runs no handler), and a worker ends at EOF on its socket.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
import traceback
from datetime import timedelta

GLOO_TIMEOUT = timedelta(seconds=60)  # a rank stuck in a collective gives up (the pool kills it sooner)


def _die_with_parent() -> None:
    """prctl(PR_SET_PDEATHSIG, SIGKILL): no replica process outlives the process that started it."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:  # not glibc Linux: EOF on its socket still ends a worker
        pass


def main(argv) -> None:
    """The zygote: import torch, fork one worker per fd, wait for them all."""
    world, store_path, counts = int(argv[0]), argv[1], [int(c) for c in argv[2].split(",")]
    fds = [int(fd) for fd in argv[3:]]
    _die_with_parent()  # SIGKILL: it also ends a zygote stopped between cases; the workers follow
    import torch.distributed  # noqa: F401  (once, before forking: the workers inherit it)

    children = [_fork_worker(fds, rank, world, store_path, counts) for rank in range(world)]
    for fd in fds:
        os.close(fd)
    for pid in children:
        os.waitpid(pid, 0)


def _fork_worker(fds, rank: int, world: int, store_path: str, counts) -> int:
    """Fork rank ``rank``: it keeps only its own socket and never returns from here."""
    zygote = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        _die_with_parent()
        if os.getppid() != zygote:  # the zygote died before the death signal was armed
            return
        for fd in fds:
            if fd != fds[rank]:
                os.close(fd)
        from multiprocessing.connection import Connection

        serve(Connection(fds[rank]), rank, world, store_path, counts)
        code = 0
    except BaseException:  # noqa: BLE001 (reported on stderr; the pool sees EOF)
        traceback.print_exc()
    finally:
        os._exit(code)


def serve(conn, rank: int, world: int, store_path: str, counts) -> None:
    """Join the gloo world, build the subgroups, then answer requests until EOF / None."""
    import torch
    import torch.distributed as dist

    from .sync_kernels import register_cpu_kernels

    torch.set_num_threads(1)
    register_cpu_kernels()
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world,
                            timeout=GLOO_TIMEOUT)
    groups = {r: dist.new_group(list(range(r))) for r in sorted(counts) if r < world}
    groups[world] = dist.group.WORLD
    conn.send({"ready": os.getpid()})
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request is None:
            return
        conn.send(_answer(request, rank, groups))


def _answer(request: dict, rank: int, groups: dict) -> dict:
    try:
        return _run(request, rank, groups[request["replicas"]])
    except Exception as exc:  # noqa: BLE001 (the framework's exception travels back to the adapter)
        return {"error": type(exc).__name__, "message": str(exc), "trace": traceback.format_exc()[-3000:]}


def _run(request: dict, rank: int, group) -> dict:
    import torch.distributed as dist

    from .common import device_context

    kind, case = request["kind"], request["case"]
    device = _select_device(kind, rank)
    with device_context(kind):
        layer = _layer(kind, case, group)
        steps = [_step(layer, case, step, kind, group) for step in case.steps]
    return {"steps": steps, "world_size": dist.get_world_size(group), "rank": dist.get_rank(group),
            "pid": os.getpid(), "device": device}


def _select_device(kind: str, rank: int) -> str:
    """"cpu", or "cuda:k" with k = rank mod the GPU count (made the current device)."""
    if kind == "cpu":
        return "cpu"
    import torch

    index = rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return f"cuda:{index}"


def _layer(kind: str, case, group):
    """A SyncBatchNorm over process group ``group`` holding the case's initial state."""
    import torch

    from .common import state_tensors, torch_device, torch_dtype
    from .nn import momentum_for

    config = case.config
    cls = torch.nn.SyncBatchNorm if kind == "cuda" else gloo_sync_batch_norm()
    layer = cls(case.channels, eps=config.effective_epsilon, momentum=momentum_for(config), affine=config.scale,
                track_running_stats=True, process_group=group, device=torch_device(kind),
                dtype=torch_dtype(config.param_dtype))
    tensors = state_tensors(case, kind)
    if layer.affine:
        layer.weight.copy_(tensors["gamma"])
        layer.bias.copy_(tensors["beta"])
    layer.running_mean.copy_(tensors["running_mean"])
    layer.running_var.copy_(tensors["running_var"])
    layer.num_batches_tracked.fill_(case.initial_state.num_updates)
    return layer


def _step(layer, case, step, kind: str, group) -> dict:
    """One call of the layer on this rank's samples (train() synchronizes, eval() does not); a step
    with dy also runs its backward (:func:`_backward`)."""
    from .common import from_channels_first, gradient_context, input_tensor, to_channels_first, to_numpy

    axis = case.config.channel_axis
    layer.train(step.is_training)
    x = input_tensor(step, case.config.input_dtype, kind)
    with gradient_context(step):
        y = from_channels_first(layer(to_channels_first(x, axis)), axis)
    grads = _backward(layer, x, y, step, kind, group) if step.dy is not None else {}
    return {"y": to_numpy(y), **grads, "running_mean": to_numpy(layer.running_mean),
            "running_var": to_numpy(layer.running_var), "num_updates": int(layer.num_batches_tracked.item())}


def _backward(layer, x, y, step, kind: str, group) -> dict:
    """``loss = (y * dy).sum(); loss.backward()`` on this rank (dy: its rows of the step's dy, in
    y's dtype), as a data-parallel training step runs it: the layer's backward all-reduces over
    ``group`` (SyncBatchNorm's Function, every rank, an empty one included). Returns dx = x.grad
    (zeros where autograd left it None: an empty rank) and dgamma / dbeta = weight.grad /
    bias.grad all-reduced with SUM over ``group`` (:func:`_summed_grad`)."""
    import torch

    from .common import to_numpy, to_tensor

    layer.zero_grad(set_to_none=True)
    with torch.enable_grad():
        loss = (y * to_tensor(step.dy, str(y.dtype).removeprefix("torch."), kind)).sum()
        loss.backward()
    dx = x.grad if x.grad is not None else torch.zeros_like(x)
    grads = {"dx": to_numpy(dx)}
    for key, parameter in (("dgamma", layer.weight), ("dbeta", layer.bias)):
        if parameter is not None:
            grads[key] = to_numpy(_summed_grad(parameter, group))
    return grads


def _summed_grad(parameter, group):
    """The parameter's gradient summed over every rank of ``group`` by ``dist.all_reduce(SUM)``:
    the gradient of the global loss (the sum of the ranks' losses). DistributedDataParallel
    all-reduces the same way and then divides by the world size (it averages, treating each rank's
    loss as a mean); bnconform's dgamma / dbeta are the gradient of the sum, so no division. A rank
    whose grad is None (SyncBatchNorm gives none to an empty rank) contributes zeros."""
    import torch
    import torch.distributed as dist

    grad = parameter.grad if parameter.grad is not None else torch.zeros_like(parameter)
    summed = grad.detach().clone()
    dist.all_reduce(summed, dist.ReduceOp.SUM, group)
    return summed


@functools.lru_cache(maxsize=None)
def gloo_sync_batch_norm():
    """nn.SyncBatchNorm with forward() as in torch 2.13 (torch/nn/modules/batchnorm.py) for
    track_running_stats=True and a process group of more than one rank, minus the check that
    raises "SyncBatchNorm expected input tensor to be on GPU or XPU or ..." for CPU input:

    * train(): num_batches_tracked += 1; factor = momentum, or 1 / num_batches_tracked when
      momentum is None; torch's SyncBatchNorm Function (torch/nn/modules/_functions.py) with the
      layer's process group and its size;
    * eval(): F.batch_norm with the running statistics, on this rank only ("Don't sync batchnorm
      stats in inference mode").
    """
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.modules._functions import SyncBatchNorm as sync_batch_norm

    class GlooSyncBatchNorm(torch.nn.SyncBatchNorm):
        def forward(self, input):
            self._check_input_dim(input)
            self._check_non_zero_input_channels(input)
            factor = 0.0 if self.momentum is None else self.momentum
            if not self.training:
                return F.batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias,
                                    False, factor, self.eps)
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / self.num_batches_tracked.item()
            world_size = dist.get_world_size(self.process_group)
            return sync_batch_norm.apply(input, self.weight, self.bias, self.running_mean, self.running_var,
                                         self.eps, factor, self.process_group, world_size)

    return GlooSyncBatchNorm


if __name__ == "__main__":
    main(sys.argv[1:])
