"""CPU kernels for the five ATen ops that torch's SyncBatchNorm Function calls and that torch 2.13
registers for CUDA only (``NotImplementedError: Could not run 'aten::batch_norm_stats' with
arguments from the 'CPU' backend``): three in its forward, two in its backward. Each follows its
CUDA kernel in
aten/src/ATen/native/cuda/Normalization.cuh / Normalization.cu, computing in the same accumulate
type (``acc_type<T, is_cuda=true>``: float for half, bfloat16 and float; double for double):

* ``batch_norm_stats(input, eps) -> (mean, invstd)``: the biased per-channel moments
  (``batch_norm_collect_statistics_kernel``, Welford per thread; here ``torch.var_mean(...,
  correction=0)``, which is what the CUDA code itself calls on its general-layout path,
  ``batch_norm_mean_var``), then ``InvStd``: 1 / sqrt(var + eps), or 0 when var == eps == 0.
  The thread layout of the CUDA Welford is not reproduced, so float32 roundings differ.
* ``batch_norm_gather_stats_with_counts(input, mean, invstd, running_mean, running_var,
  momentum, eps, counts) -> (mean, invstd)``: ``batch_norm_reduce_statistics_kernel``, line by
  line: per replica j the variance is recovered from invstd as (1 / invstd_j)^2 - eps, and the
  replicas are merged one at a time (Chan's pairwise update) into (n, avg, var_n); then
  invstd = 1 / sqrt(var_n / n + eps), running_mean <- (1 - m) r + m avg and running_var <-
  (1 - m) r + m var_n / (n - 1), written in place. With no replica left (every one empty) the
  loop does not run: n = 0, avg = 0, var_n = 0.
* ``batch_norm_elemt(input, weight, bias, mean, invstd, eps) -> y``: the general-path lambda of
  ``batch_norm_elementwise``, ((x - mean) * invstd) * weight + bias in the accumulate type,
  rounded to the input dtype (eps is unused, as on CUDA).
* ``batch_norm_backward_reduce(grad_out, input, mean, invstd, weight, input_g, weight_g, bias_g)
  -> (sum_dy, sum_dy_xmu, grad_weight, grad_bias)``: ``batch_norm_backward_reduce_kernel``, this
  replica's per-channel sums of dy and dy * (x - mean) in the accumulate type (mean's dtype;
  ``GradOp`` + ``reduce``), grad_weight = sum_dy_xmu * invstd and grad_bias = sum_dy in the
  weight's dtype; an output whose flag is False is left undefined (None), as on CUDA.
* ``batch_norm_backward_elemt(grad_out, input, mean, invstd, weight, sum_dy, sum_dy_xmu, count)
  -> grad_input``: the ``count`` overload of ``batch_norm_backward_elemt_kernel``: norm_fct =
  1 / (sum of the replicas' int32 counts) in the accumulate type, then per element
  (dy - sum_dy * norm_fct - (x - mean) * invstd^2 * sum_dy_xmu * norm_fct) * weight * invstd,
  rounded to the input dtype. sum_dy and sum_dy_xmu arrive already all-reduced over the group
  by the Function's backward (torch's code, not ported).

:func:`register_cpu_kernels` installs them with ``torch.library`` so that torch's own
``torch.nn.modules._functions.SyncBatchNorm`` runs unchanged on CPU tensors. Call it only in the
replica worker processes: it changes the process's ATen dispatch table.
"""

from __future__ import annotations

import functools

SOURCE = "https://github.com/pytorch/pytorch/blob/main/aten/src/ATen/native/cuda/Normalization.cuh"


def _torch():
    import torch

    return torch


def accumulate_dtype(dtype):
    """CUDA's accumulate type: float64 stays float64, every narrower float accumulates in float32."""
    torch = _torch()
    return torch.float64 if dtype == torch.float64 else torch.float32


def _per_channel(tensor, ndim: int):
    """A [C] tensor shaped [1, C, 1, ...] to broadcast against an input of ``ndim`` dimensions."""
    return tensor.reshape([1, -1] + [1] * (ndim - 2))


def batch_norm_stats(input, eps: float):
    """Per-channel biased mean and invstd = 1 / sqrt(var + eps) (0 when var == eps == 0)."""
    torch = _torch()
    acc = accumulate_dtype(input.dtype)
    var, mean = torch.var_mean(input.to(acc), dim=[0, *range(2, input.dim())], correction=0)
    # InvStd: eps arrives as the accumulate type, the sum and the root are taken in double
    eps_acc = float(torch.tensor(eps, dtype=acc))
    invstd = (1.0 / torch.sqrt(var.double() + eps_acc)).to(acc)
    return mean, torch.where((var != 0) | (eps_acc != 0), invstd, torch.zeros_like(invstd))


def batch_norm_gather_stats_with_counts(input, mean, invstd, running_mean, running_var, momentum: float,
                                        eps: float, counts):
    """Global (mean, invstd) from per-replica rows of mean, invstd and counts; updates the running
    statistics in place (see the module docstring for the formulas)."""
    torch = _torch()
    scalar = running_mean.dtype if running_mean is not None else input.dtype
    acc = accumulate_dtype(scalar)
    eps_acc, mom = (float(torch.tensor(v, dtype=acc)) for v in (eps, momentum))
    avg = torch.zeros(mean.shape[1], dtype=acc)
    var_n = torch.zeros_like(avg)
    n = 0
    for j in range(mean.shape[0]):
        count, m = float(counts[j]), mean[j].to(acc)
        v = 1.0 / invstd[j].to(acc)
        v = (v * v - eps_acc) * count
        factor = float(torch.tensor(1.0 / (n + count), dtype=acc))  # 1.0 / (n + count): double, then acc
        var_n = var_n + v + (avg - m) * (avg - m) * n * count * factor
        avg = n * factor * avg + count * factor * m
        n += int(count)
    # tensor / 0 is NaN or inf, as on the GPU (no replica left: n = 0; one sample: n - 1 = 0)
    global_invstd = 1.0 / torch.sqrt(var_n / n + eps_acc)
    if running_mean is not None:
        running_mean.copy_(((1 - mom) * running_mean.to(acc) + mom * avg).to(scalar))
    if running_var is not None:
        running_var.copy_(((1 - mom) * running_var.to(acc) + mom * (var_n / (n - 1))).to(scalar))
    return avg, global_invstd


def batch_norm_elemt(input, weight, bias, mean, invstd, eps: float):
    """y = ((x - mean) * invstd) * weight + bias per channel, in mean's (accumulate) dtype."""
    acc, ndim = mean.dtype, input.dim()
    y = (input.to(acc) - _per_channel(mean, ndim)) * _per_channel(invstd, ndim)
    if weight is not None:
        y = y * _per_channel(weight.to(acc), ndim)
    if bias is not None:
        y = y + _per_channel(bias.to(acc), ndim)
    return y.to(input.dtype)


def batch_norm_backward_reduce(grad_out, input, mean, invstd, weight, input_g: bool, weight_g: bool,
                               bias_g: bool):
    """This replica's (sum_dy, sum_dy_xmu) in mean's dtype and (grad_weight, grad_bias) in the
    weight's dtype, per channel; each output whose flag is False is None (undefined)."""
    acc, dims = mean.dtype, [0, *range(2, input.dim())]
    dy = grad_out.to(acc)
    sum_dy = dy.sum(dims)
    sum_dy_xmu = (dy * (input.to(acc) - _per_channel(mean, input.dim()))).sum(dims)
    grad_weight = (sum_dy_xmu * invstd).to(weight.dtype) if weight_g else None
    grad_bias = sum_dy.to(weight.dtype) if bias_g else None
    return (sum_dy if input_g else None, sum_dy_xmu if input_g else None, grad_weight, grad_bias)


def batch_norm_backward_elemt(grad_out, input, mean, invstd, weight, sum_dy, sum_dy_xmu, count):
    """grad_input from the group-wide sums; ``count`` holds every non-empty replica's count (int32)."""
    torch, acc, ndim = _torch(), mean.dtype, input.dim()
    norm_fct = torch.tensor(1, dtype=acc) / torch.tensor(int(count.to(torch.int64).sum()), dtype=acc)
    m_dy = _per_channel(sum_dy * norm_fct, ndim)
    factor_2 = invstd if weight is None else weight.to(acc) * invstd
    factor_1 = _per_channel(invstd * invstd * sum_dy_xmu * norm_fct, ndim)
    xmu = input.to(acc) - _per_channel(mean, ndim)
    return ((grad_out.to(acc) - m_dy - xmu * factor_1) * _per_channel(factor_2, ndim)).to(input.dtype)


KERNELS = {"batch_norm_stats": batch_norm_stats,
           "batch_norm_gather_stats_with_counts": batch_norm_gather_stats_with_counts,
           "batch_norm_elemt": batch_norm_elemt,
           "batch_norm_backward_reduce": batch_norm_backward_reduce,
           "batch_norm_backward_elemt": batch_norm_backward_elemt}


@functools.lru_cache(maxsize=None)
def register_cpu_kernels():
    """Install the kernels above as the CPU implementations of the five ATen ops (once per
    process); returns the ``torch.library.Library`` that holds them (it must stay alive)."""
    library = _torch().library.Library("aten", "IMPL")
    for name, kernel in KERNELS.items():
        library.impl(name, kernel, "CPU")
    return library
