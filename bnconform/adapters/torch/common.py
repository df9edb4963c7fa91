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
- ``common_unsupported(case)``     -> the reason a knob has no torch parameter, or None.
- ``shared_deviations(...)``       -> the deviations both adapters show (same F.batch_norm code).

Importing this module does not import torch.
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np

from ..base import Deviation, MatchesVariant, Mismatches, Raises, has_training_step, variant

DEVICE_KINDS = ("cpu", "cuda", "cuda-nocudnn")
# Cases hold at most a few hundred values, below torch's parallel grain size, so the intra-op
# pool never splits work; on a shared machine its wake-ups made single cases take 20-40 ms.
ENVIRONMENT = {"OMP_NUM_THREADS": "1"}

DOCS_BATCHNORM = "https://docs.pytorch.org/docs/stable/generated/torch.nn.modules.batchnorm.BatchNorm1d.html"
ISSUE_SINGLE_VALUE = "https://github.com/pytorch/pytorch/issues/1381"
PR_POSITIVE_EPS = "https://github.com/pytorch/pytorch/pull/166756"
PR_FLOAT32_OVERFLOW = "https://github.com/pytorch/pytorch/pull/178123"
_FLOAT32_SQRT_MAX = float(np.sqrt(np.finfo(np.float32).max))  # |x| beyond this squares to inf


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


def common_unsupported(case) -> str | None:
    """Knobs neither torch API has a parameter for (both call the same batch_norm kernel)."""
    config, rs = case.config, case.config.running_stats
    if config.epsilon_mode != "add_inside_sqrt":
        return (f"torch batch_norm adds eps inside the square root only, y = (x - mean) / sqrt(var + eps); "
                f"epsilon_mode {config.epsilon_mode!r} has no parameter")
    if rs.zero_debias:
        return "torch batch_norm has no zero-debias option (running stats are a plain EMA from their current value)"
    if rs.num_updates_schedule:
        return "torch momentum is a fixed constant; there is no num_updates decay schedule"
    if not 2 <= case.rank <= 5:
        return f"torch BatchNorm1d/2d/3d take inputs of rank 2 to 5; this case has rank {case.rank}"
    return None


def has_eval_step_with_update(case) -> bool:
    """Some step normalizes with the running stats but must update them (no torch call does)."""
    return any(not s.is_training and s.update_running_stats for s in case.steps)


def _updates_in_training(case) -> bool:
    return any(s.is_training and s.update_running_stats and n > 1 for s, n in zip(case.steps, case.reduce_counts()))


def _largest_finite(x: np.ndarray) -> float:
    wide = np.asarray(x, dtype=np.float64)
    finite = np.abs(wide[np.isfinite(wide)])
    return float(finite.max()) if finite.size else 0.0


def squares_overflow_float32(case, device) -> bool:
    """Moments accumulate in float32 (input not float64) and a finite training input squares past float32 max."""
    if case.config.input_dtype == "float64":
        return False
    return any(s.is_training and _largest_finite(s.x) > _FLOAT32_SQRT_MAX for s in case.steps)


def shared_deviations(api: str) -> tuple[Deviation, ...]:
    """Deviations that come from F.batch_norm itself, so both adapters show them; ``api`` names the caller."""
    return (
        Deviation(
            name="single-value-per-channel-raises",
            applies_to="a training step with exactly one value per channel (N == 1)",
            applies=lambda case, device: has_training_step(case, min_count=1, max_count=1),
            behaviour=Raises("ValueError", "Expected more than 1 value per channel when training"),
            explanation=f"{api} refuses to normalize one value per channel in training (the Bessel-corrected "
                        "running variance would be 0/0); the canonical model gives y = beta and keeps the biased var 0",
            link=ISSUE_SINGLE_VALUE,
        ),
        Deviation(
            name="eps-zero-rejected-in-training",
            applies_to="eps == 0 with a training step",
            applies=lambda case, device: case.config.effective_epsilon <= 0.0 and has_training_step(case),
            behaviour=Raises("ValueError", "eps must be positive during training"),
            explanation=f"{api}: since torch 2.10 F.batch_norm raises for eps <= 0 in training (eval allows 0); "
                        "the canonical model divides by sqrt(var) and yields inf/NaN for constant channels",
            link=PR_POSITIVE_EPS,
        ),
        Deviation(
            name="running-variance-bessel",
            applies_to="running-variance kind 'biased' with an updating training step of N > 1",
            applies=lambda case, device: case.config.running_stats.variance == "biased" and _updates_in_training(case),
            behaviour=MatchesVariant("running variance is Bessel-corrected (N/(N-1))",
                                     lambda case: variant(case, running_stats={"variance": "bessel"})),
            explanation=f"{api} normalizes with the biased batch variance but folds the unbiased one "
                        "(torch.var(correction=1)) into running_var",
            link=DOCS_BATCHNORM,
        ),
        Deviation(
            name="float32-variance-overflow",
            applies_to="float32 (or half) training inputs with |x| > 1.8e19, whose squares overflow float32",
            applies=squares_overflow_float32,
            behaviour=Mismatches(("y", "running_var"), "y and running_var differ: the float32 variance overflows"),
            explanation=f"{api} accumulates float32 input moments in float32 (Welford M2 = sum (x - mean)^2): "
                        "for |x| ~ 1e37 the variance is inf, so y collapses to beta (CPU; NaN on CUDA) and running_var "
                        "is inf where the exact value is ~2e73",
            link=PR_FLOAT32_OVERFLOW,
        ),
    )
