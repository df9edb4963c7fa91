"""Shared helpers for the PyTorch adapters (torch.nn and torch.functional).

- ``torch()``                      -> the imported ``torch`` module (imported lazily, once).
- ``torch_devices()``              -> ``["cpu"]`` plus ``"cuda"`` and ``"cuda-nocudnn"`` when
  ``torch.cuda.is_available()``.
- ``device_context(device)``       -> no-grad context; on "cuda-nocudnn" it also switches cuDNN
  off (``torch.backends.cudnn.flags(enabled=False)``) so torch's native CUDA kernels run.
- ``to_tensor(array, dtype, dev)`` -> a tensor holding exactly the case's values.
- ``to_numpy(tensor)``             -> NumPy (bfloat16 widened to float32, which is exact).
- ``to_channels_first`` / ``from_channels_first`` -> torch keeps channels on axis 1 only, so other
  channel axes are moved there and back (a layout change, no arithmetic).
- ``TORCH_CAPABILITIES``           -> what both APIs express (same F.batch_norm kernel); each
  adapter narrows it (``dataclasses.replace``).
- ``shared_deviations(...)``       -> the deviations both adapters show (same F.batch_norm code).
- ``TorchAdapter``                 -> the class attributes and devices() both adapters share.
- ``state_tensors(case, device)``  -> the case's initial gamma, beta and running statistics as tensors.
- ``input_tensor(step, dtype, dev)`` / ``gradient_context(step)`` / ``vjp(y, step, wrt, dev)``
  -> the gradient plumbing both adapters share (below).

Gradients: for a step with an upstream ``dy`` the input is a leaf tensor with
``requires_grad``, the call runs under ``torch.enable_grad()`` (inside the adapter's no-grad
device context, so cuDNN stays on or off as the device says) and ``torch.autograd.grad(y, [x,
weight, bias], grad_outputs=dy)`` returns the VJP of that same call: dx in the input dtype and
layout (autograd goes through the movedim), dgamma / dbeta in the param dtype. ``autograd.grad``
accumulates nothing into ``.grad``, so cached modules carry no state between cases. Forward-only
steps build no graph.

Importing this module does not import torch.
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np

from ...judging.capabilities import Capabilities
from ...judging.declarations import release
from ...judging.selectors import (device_in, epsilon_zero, half_params_rounded_mean_shows, input_dtype_in,
                                  training_channel_moments, training_step, where)
from ..base import Adapter, Deviation, Mismatches, Raises
from ..findings import float32_variance_overflow

DEVICE_KINDS = ("cpu", "cuda", "cuda-nocudnn")
# Cases hold at most a few hundred values, below torch's parallel grain size, so the intra-op
# pool never splits work; on a shared machine its wake-ups made single cases take 20-40 ms.
# KERAS_BACKEND=torch: Keras 3 on its torch backend declares the same environment, so it shares
# the torch adapters' host process (torch is imported once); nn/F.batch_norm never read it.
ENVIRONMENT = {"OMP_NUM_THREADS": "1", "KERAS_BACKEND": "torch"}

DOCS_BATCHNORM = "https://docs.pytorch.org/docs/stable/generated/torch.nn.modules.batchnorm.BatchNorm1d.html"
ISSUE_SINGLE_VALUE = "https://github.com/pytorch/pytorch/issues/1381"
PR_POSITIVE_EPS = "https://github.com/pytorch/pytorch/pull/166756"
INV_STD_SOURCE = "https://github.com/pytorch/pytorch/blob/v2.5.1/aten/src/ATen/native/Normalization.cpp"
PR_CPU_HALF = "https://github.com/pytorch/pytorch/pull/102070"  # "add Half support for BatchNorm on CPU"
PR_FLOAT32_OVERFLOW = "https://github.com/pytorch/pytorch/pull/178123"
# The CPU kernel file at the commit the installed torch 2.13.0 was built from (torch.version.git_version).
BATCH_NORM_KERNEL = ("https://github.com/pytorch/pytorch/blob/cf30153c4c131c8164ee7798e5022d810682e2cb/"
                     "aten/src/ATen/native/cpu/batch_norm_kernel.cpp")


@functools.lru_cache(maxsize=None)
def torch():
    """The ``torch`` module, imported on first use."""
    import torch as module

    return module


@functools.lru_cache(maxsize=None)
def torch_devices() -> list[str]:
    """CPU always; both CUDA flavours (with and without cuDNN) when torch sees a GPU."""
    return list(DEVICE_KINDS) if torch().cuda.is_available() else ["cpu"]


def torch_device(device: str) -> str:
    """The torch device string for a bnconform device name."""
    if device not in DEVICE_KINDS:
        raise ValueError(f"Expected: device in {list(DEVICE_KINDS)}. Received: {device!r}")
    return "cpu" if device == "cpu" else "cuda"


@contextlib.contextmanager
def device_context(device: str):
    """No autograd bookkeeping; cuDNN disabled on "cuda-nocudnn" (torch's own kernels run)."""
    t = torch()
    with contextlib.ExitStack() as stack:
        stack.enter_context(t.no_grad())
        if device == "cuda-nocudnn":
            stack.enter_context(t.backends.cudnn.flags(enabled=False))
        yield


def torch_dtype(name: str):
    """The torch dtype named ``name`` (canonical names equal torch's)."""
    dtype = getattr(torch(), str(name), None)
    if not isinstance(dtype, torch().dtype):
        raise ValueError(f"Expected: a float dtype name such as 'float32'. Received: {name!r}")
    return dtype


def to_tensor(array, dtype_name: str, device: str):
    """A fresh tensor of dtype ``dtype_name`` on ``device`` with the array's exact values.

    NumPy has no native bfloat16, so bfloat16 arrays (ml_dtypes) travel as float32, which holds
    every bfloat16 value exactly, and are rounded back (a no-op) by ``.to(bfloat16)``.
    """
    values = np.asarray(array)
    if dtype_name == "bfloat16":
        values = values.astype(np.float32)
    tensor = torch().tensor(values, device=torch_device(device))
    return tensor.to(torch_dtype(dtype_name))


def state_tensors(case, device: str) -> dict:
    """gamma, beta, running_mean and running_var of the case's initial state, as tensors in the
    param dtype on the device."""
    state, dtype = case.initial_state, case.config.param_dtype
    return {name: to_tensor(getattr(state, name), dtype, device)
            for name in ("gamma", "beta", "running_mean", "running_var")}


def input_tensor(step, dtype_name: str, device: str):
    """The step's x as a tensor; a leaf that requires grad when the step carries an upstream dy."""
    x = to_tensor(step.x, dtype_name, device)
    return x.requires_grad_() if step.dy is not None else x


def gradient_context(step):
    """``torch.enable_grad()`` for a step with dy (the graph is recorded), else nothing at all."""
    return torch().enable_grad() if step.dy is not None else contextlib.nullcontext()


def vjp(y, step, wrt: dict, device: str) -> dict:
    """dx, dgamma, dbeta: d(sum(dy * y)) / d(wrt[...]) by ``torch.autograd.grad`` with cotangent dy.

    ``wrt`` maps "dx" / "dgamma" / "dbeta" to the leaf tensors y was computed from (None = absent:
    that parameter is off); dy travels in y's dtype (the input dtype), in y's layout.
    """
    names = [key for key, tensor in wrt.items() if tensor is not None]
    dy = to_tensor(step.dy, str(y.dtype).removeprefix("torch."), device)
    grads = torch().autograd.grad(y, [wrt[key] for key in names], grad_outputs=dy)
    return {key: to_numpy(grad) for key, grad in zip(names, grads)}


def to_numpy(tensor) -> np.ndarray:
    """NumPy value of a tensor (a copy on the host); bfloat16 widened to float32 exactly."""
    tensor = tensor.detach()
    if tensor.dtype == torch().bfloat16:
        tensor = tensor.float()
    return tensor.cpu().numpy().copy()


def to_channels_first(x, channel_axis: int):
    """Move the channel axis to 1, where torch's batch norm expects it (a view, no arithmetic)."""
    return x if channel_axis == 1 else x.movedim(channel_axis, 1)


def from_channels_first(y, channel_axis: int):
    """Inverse of :func:`to_channels_first`."""
    return y if channel_axis == 1 else y.movedim(1, channel_axis)


# torch's conventions: eps inside the square root, a Bessel-corrected running variance, a plain
# EMA with a constant momentum (no zero-debias, no num_updates schedule); ranks 2..5 (1d/2d/3d).
# autograd differentiates both the training and the inference call (see vjp).
TORCH_CAPABILITIES = Capabilities(
    epsilon_modes=frozenset({"add_inside_sqrt"}), running_variance=frozenset({"bessel"}),
    zero_debias=frozenset({False}), num_updates_schedule=frozenset({False}),
    step_kinds=frozenset({("batch", True), ("batch", False), ("running", False)}),
    gradients=frozenset({"batch", "running"}))


def shared_deviations(api: str) -> tuple[Deviation, ...]:
    """Deviations that come from F.batch_norm itself, so both adapters show them; ``api`` names the caller."""
    return (
        Deviation(
            name="single-value-per-channel-raises",
            kind="edge",
            applies=training_step(1, 1),
            behaviour=Raises("ValueError", "Expected more than 1 value per channel when training"),
            explanation=f"{api} refuses to normalize one value per channel in training (the Bessel-corrected "
                        "running variance would be 0/0); the canonical model gives y = beta and keeps the biased var 0",
            link=ISSUE_SINGLE_VALUE,
        ),
        Deviation(
            name="eps-zero-rejected-in-training",
            kind="edge",
            applies=epsilon_zero & training_step(),
            behaviour=Raises("ValueError", "eps must be positive during training"),
            explanation=f"{api}: since torch 2.10 F.batch_norm raises for eps <= 0 in training (eval allows 0); "
                        "the canonical model divides by sqrt(var) and yields inf/NaN for constant channels",
            link=PR_POSITIVE_EPS,
            versions=">=2.10",  # the sweep: 2.1.2 and 2.5.1 accept eps = 0 (reports/history.md)
        ),
        Deviation(
            name="constant-channel-eps-zero-gives-beta",
            kind="edge",
            applies=constant_channel_eps_zero,
            behaviour=Mismatches(("y",), "y = beta on the constant channel, where the model's 0/0 is NaN"),
            explanation=f"{api} before torch 2.10 accepts eps = 0 in training, and its InvStd transform "
                        "returns invstd = 0 when var == 0 and eps == 0 (aten/src/ATen/native/Normalization.cpp), so "
                        "a constant channel normalizes to exactly beta instead of (x - mu) / sqrt(0) = 0/0 = NaN "
                        "(measured by the version sweep in 2.1.2, 2.5.1 and 2.9.1: y equals beta there)",
            link=INV_STD_SOURCE,
            versions="<2.10",
        ),
        Deviation(
            name="cpu-half-not-implemented",
            kind="dtype",
            applies=input_dtype_in("float16") & device_in("cpu"),
            behaviour=Raises("RuntimeError", "not implemented for 'Half'"),
            explanation=f"{api} before torch 2.2 has no float16 CPU kernel: batch_norm raises "
                        "'\"batch_norm\" not implemented for 'Half'' (added by pull request 102070, first released "
                        "in 2.2; measured by the version sweep: 2.1.2 raises, 2.5.1 runs)",
            link=PR_CPU_HALF,
            versions="<2.2",
        ),
        float32_variance_overflow(
            "float32-variance-overflow",
            f"{api} accumulates float32 input moments in float32 (Welford M2 = sum (x - mean)^2): "
            "for |x| ~ 1e37 the variance is inf, so y collapses to beta (CPU; NaN on CUDA) and running_var "
            "is inf where the exact value is ~2e73",
            PR_FLOAT32_OVERFLOW, effect="y collapses to beta (CPU; NaN on CUDA), running_var is inf, dx = dgamma = 0"),
        Deviation(
            name="half-parameters-half-batch-moments",
            kind="dtype",
            # CUDA allocates save_mean / save_invstd in the accumulate type (batch_norm_cuda in
            # Normalization.cu): CPU only (not measured on a GPU here).
            applies=half_params_rounded_mean_shows & device_in("cpu"),
            behaviour=Mismatches(("y",), "y normalized with the batch mean and 1/sigma rounded to the half dtype"),
            explanation=f"{api} with weight, bias and running stats in the input's half dtype (model.half()): the "
                        "CPU kernel is then not 'mixed type', so save_mean / save_invstd are half tensors "
                        "(batch_norm_cpu_collect_stats_*_internal<scalar_t, scalar_t>: mean_data[c] = "
                        "param_t(sum / N), and the channels-last path sums the variance about that rounded "
                        "mean) and y = x * alpha + beta uses the rounded mean and invstd: y moves by up to "
                        "ulp(mean)/2 * |gamma| / sigma (found by bnconform fuzz; measured: y equals that "
                        "rounding exactly, float16 and bfloat16)",
            link=BATCH_NORM_KERNEL,
        ),
    )


@where("eps == 0 and a constant channel in a training batch")
def constant_channel_eps_zero(case) -> bool:
    return case.config.effective_epsilon <= 0 and any((spread == 0).any() for _, spread in training_channel_moments(case))


def signature_defaults(function) -> dict[str, float | None]:
    """momentum and eps defaults of a torch callable, read from its signature."""
    import inspect

    parameters = inspect.signature(function).parameters
    return {"decay_parameter": parameters["momentum"].default, "epsilon": parameters["eps"].default}


class TorchAdapter(Adapter):
    """What torch.nn and torch.functional share: the torch distribution, CPU plus both CUDA flavours,
    one intra-op thread, and ``momentum`` weighing the new batch (momentum = 1 - decay)."""

    framework = "torch"
    extra = "torch"
    requires = ("torch",)
    device_kinds = DEVICE_KINDS
    environment = ENVIRONMENT
    decay_parameter = ("momentum", "new")

    @classmethod
    def sweep_requirements(cls, version: str) -> tuple[str, ...]:
        """torch before 2.3 was built against NumPy 1.x (Tensor.numpy() fails under NumPy 2)."""
        return ("numpy<2",) if release(version) < (2, 3) else ()

    def devices(self) -> list[str]:
        """The device kinds torch can use here that this row declares (``device_kinds``)."""
        return [device for device in torch_devices() if device in self.device_kinds]
