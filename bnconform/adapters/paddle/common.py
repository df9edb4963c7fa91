"""Shared helpers for the PaddlePaddle adapters (paddle.nn, paddle.functional,
paddle.use_global_stats).

All three reach one kernel: ``paddle.nn.BatchNorm1D/2D/3D.forward()`` calls
``paddle.nn.functional.batch_norm(x, self._mean, self._variance, weight, bias, self.training,
self._momentum, self._epsilon, data_format, self._use_global_stats)``, which calls
``_C_ops.batch_norm`` (the CPU kernel ``phi::BatchNormKernel``, float32 and float64 only).

- ``paddle()``                 -> the imported ``paddle`` module (imported lazily, once).
- ``quiet_training_warning()`` -> the layers' per-call training warning silenced around a call.
- ``to_tensor(array, dtype)``  -> a fresh CPU tensor with the array's exact values.
- ``to_numpy(tensor)``         -> a NumPy copy.
- ``data_format(case)``        -> Paddle's layout string, and the axis the channel is moved to first
  (``None`` when the channel axis is already where the layout puts it).
- ``to_layout`` / ``from_layout`` -> ``paddle.moveaxis`` there and back (no arithmetic).
- ``PADDLE_CAPABILITIES``      -> what the kernel expresses; ``shared_deviations(api)`` -> what it shows.
- ``PaddleAdapter``            -> the class attributes the adapters share.
- ``gradient_context(step)`` / ``input_tensor`` / ``vjp`` -> the gradient plumbing (below).

Layout: the kernel takes the channel first (``NC``, ``NCL``, ``NCHW``, ``NCDHW``) or last (``NLC``,
``NHWC``, ``NDHWC``); any other channel axis is moved to axis 1 and back.

Gradients: forward-only steps run under ``paddle.no_grad()`` (no graph). A step with an
upstream ``dy`` runs the same call with x as a tensor with ``stop_gradient=False`` and returns
``paddle.grad([y], [x, weight, bias], grad_outputs=[dy])``: dx through the layout moves, dgamma /
dbeta in the parameter dtype. ``paddle.grad`` accumulates nothing into ``.grad``, so cached layers
carry no state between cases.

Importing this module does not import paddle.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import warnings

import numpy as np

from ...judging.capabilities import Capabilities, dtype_pairs
from ...judging.selectors import training_step, where
from ..base import Adapter, Deviation, MatchesVariant, Mismatches, variant
from ..findings import float32_variance_overflow

# Paddle's own bootstrap sets OMP_NUM_THREADS=1 when it is unset and prints "WARNING: OMP_NUM_THREADS
# set to N, not 1 ... PLEASE USE OMP_NUM_THREADS WISELY" to stderr when it is above 1. Setting it here
# keeps Paddle's default whatever the user's shell says. It buys no speed: the CPU kernel is
# single-threaded Eigen on these sizes (bench median 0.26 ms per case with or without it).
ENVIRONMENT = {"OMP_NUM_THREADS": "1"}

KERNEL_SOURCE = "https://github.com/PaddlePaddle/Paddle/blob/develop/paddle/phi/kernels/cpu/batch_norm_kernel.cc"
GRAD_KERNEL_SOURCE = ("https://github.com/PaddlePaddle/Paddle/blob/develop/paddle/phi/kernels/cpu/"
                      "batch_norm_grad_kernel.cc")

_LAYOUTS = {2: ("NC", "NC"), 3: ("NCL", "NLC"), 4: ("NCHW", "NHWC"), 5: ("NCDHW", "NDHWC")}


@functools.lru_cache(maxsize=None)
def paddle():
    """The ``paddle`` module, imported on first use."""
    with warnings.catch_warnings():  # "No ccache found" (paddle.utils.cpp_extension, at import)
        warnings.simplefilter("ignore")
        import paddle as module
    return module


@contextlib.contextmanager
def quiet_training_warning():
    """Silence "When training, we now always track global mean and variance", which
    _BatchNormBase.forward warns on every train() call (thousands of times in a matrix run).
    Scoped to the call: pytest restores the warning filters around every test."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="When training, we now always track global mean and variance")
        yield


def to_tensor(array, dtype_name: str):
    """A fresh CPU tensor of dtype ``dtype_name`` holding exactly the array's values."""
    return paddle().to_tensor(np.asarray(array, dtype=dtype_name), place=paddle().CPUPlace())


def to_numpy(tensor) -> np.ndarray:
    """NumPy copy of a tensor."""
    return np.array(tensor.numpy(), copy=True)


def data_format(case) -> tuple[str, int | None]:
    """(Paddle data_format, axis to move the channel from or None) for the case's rank and channel axis."""
    first, last = _LAYOUTS[case.rank]
    axis = case.config.channel_axis
    if axis == 1:
        return first, None
    if axis == case.rank - 1:
        return last, None
    return first, axis


def to_layout(x, moved_from: int | None):
    """Move the channel axis to 1 where the layout needs it (``paddle.moveaxis``, differentiable)."""
    return x if moved_from is None else paddle().moveaxis(x, moved_from, 1)


def from_layout(y, moved_from: int | None):
    """Inverse of :func:`to_layout`."""
    return y if moved_from is None else paddle().moveaxis(y, 1, moved_from)


def input_tensor(step, dtype_name: str):
    """The step's x; differentiable (``stop_gradient=False``) when the step carries an upstream dy."""
    x = to_tensor(step.x, dtype_name)
    x.stop_gradient = step.dy is None
    return x


def gradient_context(step):
    """``paddle.no_grad()`` for a forward-only step (no graph is recorded), else nothing."""
    return paddle().no_grad() if step.dy is None else contextlib.nullcontext()


def vjp(y, step, wrt: dict) -> dict:
    """dx, dgamma, dbeta: ``paddle.grad`` of y with cotangent dy (in y's dtype) w.r.t. ``wrt``'s
    tensors (None = that parameter is off)."""
    names = [key for key, tensor in wrt.items() if tensor is not None]
    dy = to_tensor(step.dy, str(y.dtype).removeprefix("paddle."))
    grads = paddle().grad([y], [wrt[key] for key in names], grad_outputs=[dy])
    return {key: to_numpy(grad) for key, grad in zip(names, grads)}


@where("scale or center off (only one of weight and bias exists) and a step with an upstream gradient dy")
def _one_parameter_gradient(case) -> bool:
    config = case.config
    return config.scale != config.center and bool(case.gradient_modes)


# The CPU kernel: eps inside the square root, a biased running variance (saved_variance / N folded
# in with momentum), a plain EMA (momentum is a constant float), float32 and float64 only (no half
# kernel on CPU: PD_REGISTER_KERNEL(batch_norm, CPU, ..., float, double)), ranks 2..5.
# The gradient kernel computes d_scale and d_bias only together (if (d_scale && d_bias)): with one
# of weight / bias absent, paddle.grad returns None for the other (Paddle requires both to be
# trainable or neither, https://github.com/PaddlePaddle/Paddle/pull/47634), so those gradient
# cases are not expressible.
PADDLE_CAPABILITIES = Capabilities(
    epsilon_modes=frozenset({"add_inside_sqrt"}), running_variance=frozenset({"biased"}),
    zero_debias=frozenset({False}), num_updates_schedule=frozenset({False}), running_rules=frozenset({"ema"}),
    step_kinds=frozenset({("batch", True), ("running", False)}),
    dtypes=dtype_pairs(inputs=("float64", "float32")),
    gradients=frozenset({"batch", "running"}),
    when=((_one_parameter_gradient, {"gradients": frozenset()}),))


def float32_attributes(case):
    """The case as the kernel sees it: ``float momentum`` and ``float epsilon`` attributes, i.e. the
    decay and epsilon rounded to float32 (then widened to double in the float64 kernel)."""
    config = case.config
    return variant(case, epsilon=float(np.float32(config.epsilon)),
                   epsilon_floor=float(np.float32(config.epsilon_floor)),
                   running_stats={"decay": float(np.float32(config.running_stats.decay))})


@where("float64 tensors with an epsilon, epsilon floor or decay that float32 does not hold exactly (e.g. 1e-5, 0.9)")
def float64_attributes_round(case) -> bool:
    """Where the float32 attributes show: float64 tensors and a knob that float32 rounds."""
    config = case.config
    knobs = (config.epsilon, config.epsilon_floor, config.running_stats.decay)
    return config.input_dtype == "float64" and any(k is not None and float(np.float32(k)) != k for k in knobs)


def shared_deviations(api: str) -> tuple[Deviation, ...]:
    """Deviations of the batch_norm kernel itself, shown by every adapter; ``api`` names the caller."""
    return (
        Deviation(
            name="single-value-per-channel-passes-x-through",
            kind="edge",
            applies=training_step(1, 1),
            behaviour=Mismatches(("y", "running_mean", "running_var", "dx", "dbeta"),
                                 "y = x (gamma, beta and eps ignored), running statistics not updated; the gradient "
                                 "is the identity's (dx = dy, dbeta = 0)"),
            explanation=f"{api}: with one value per channel (N * H * W == 1) the CPU kernel returns before normalizing "
                        "(\"we skip the batch norm calculation, let y = x\") and before the running-statistics update; "
                        "the model's biased variance is 0 there, so y = beta and the statistics move towards x",
            link=KERNEL_SOURCE,
        ),
        float32_variance_overflow(
            "float32-variance-overflow",
            f"{api}: the float32 kernel sums (x - mean)^2 in float32, so inputs of ~1e37 give an Inf "
            "variance (inv_std 0, y = beta) where the exact variance is ~2e73",
            KERNEL_SOURCE),
        Deviation(
            name="float32-epsilon-momentum",
            kind="dtype",
            applies=float64_attributes_round,
            behaviour=MatchesVariant("results match the variant with epsilon and decay rounded to float32",
                                     float32_attributes),
            explanation=f"{api}: momentum and epsilon are `float` attributes of the batch_norm op, so the float64 "
                        "kernel computes with float32(0.9) = 0.899999976 and float32(1e-5) = 9.99999975e-06: "
                        "~2e-8 relative error in the running statistics, far above float64 tolerances",
            link=KERNEL_SOURCE,
        ),
    )


def signature_defaults(function) -> dict[str, float | None]:
    """momentum and epsilon defaults of a paddle callable, read from its signature."""
    parameters = inspect.signature(function).parameters
    return {"decay_parameter": parameters["momentum"].default, "epsilon": parameters["epsilon"].default}


class PaddleAdapter(Adapter):
    """What the paddle adapters share: the paddlepaddle distribution, CPU (the CPU wheel), one OpenMP
    thread, and ``momentum`` weighing the OLD statistic (momentum = decay, like Keras; PyTorch's
    momentum of the same name weighs the new batch)."""

    framework = "paddlepaddle"
    extra = "paddle"
    requires = ("paddle",)
    device_kinds = ("cpu",)
    environment = ENVIRONMENT
    decay_parameter = ("momentum", "old")
    capabilities = PADDLE_CAPABILITIES
