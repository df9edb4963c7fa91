"""mindspore.nn.BatchNorm1d / 2d / 3d cells, driven through set_train(True / False), on the CPU.

Environment: its own (:data:`MINDSPORE_ENV`: ``mindspore==2.10.0`` with ``numpy<2`` on the
controller's Python), built by bnconform with uv on first use (``bnconform env sync``). The
2.10.0 wheel (Python 3.9-3.12, linux x86_64) declares only numpy>=1.25, but its C++ extension
is built against NumPy 1.x: under NumPy 2 ``import mindspore`` succeeds and the first operation
raises SystemError, so it cannot share the user's environment. 2.10.0 is the newest release on
the registry and the floor of the ``mindspore`` extra; everything below was established on it.

Translation (canonical knob -> MindSpore argument):

==========================  ==========================================================
channel_axis                must be 1 (data_format='NHWC' is GPU-only: the constructor
                            raises on the CPU), so other axes are moved to 1 and back
                            (ops.moveaxis, inside the differentiated function)
rank 2 / 3 / 4 / 5          BatchNorm1d / BatchNorm1d / BatchNorm2d / BatchNorm3d (which
                            reshapes to rank 4 for an inner ``bn2d`` holding the state)
epsilon (+ epsilon_floor)   eps = max(epsilon, epsilon_floor)
scale and center            affine=True, gamma_init = gamma, beta_init = beta
scale off and center off    affine=False (gamma 1 and beta 0, not trainable)
rule ema, decay d           momentum = d: MindSpore's momentum weighs the OLD statistic
                            (_BatchNorm passes 1 - momentum to ops.BatchNorm, whose CPU
                            kernel does moving * (1 - m) + batch * m)
param_dtype                 dtype= (gamma, beta, moving_mean, moving_variance)
initial running stats       moving_mean_init, moving_var_init
normalize_with batch        set_train(True), use_batch_statistics=None: updates them
normalize_with running      set_train(False): never updates them
==========================  ==========================================================

The initial state goes in through the constructor's own initializers, so nothing is written into
a cell after it is built. Gradients (both step kinds): ``mindspore.vjp`` of that same call with
cotangent dy, w.r.t. x and the cell's own gamma / beta Parameters (x only when affine=False).

Capabilities, as measured on 2.10.0: ops.BatchNorm takes float16 and float32 only (float64 and
bfloat16 raise TypeError); one ``affine`` flag; no training step without an update
(use_batch_statistics=True updates even after set_train(False)) and no inference step with one;
no cumulative rule, zero-debias or schedule. Conventions of the CPU kernel (oneDNN,
``ops/kernel/cpu/mkldnn/batch_norm_cpu_kernel.cc``): eps inside the square root and a
Bessel-corrected running variance (it multiplies the biased batch variance by nhw / (nhw - 1)).

Findings (:data:`DEVIATIONS`, each verified on every run): eps = 0 raises (edge); N == 1 makes
the running variance NaN through that factor (edge); an empty batch updates the running
statistics with batch statistics it never computed, 0 in a fresh process, else what an earlier
call left (defect: its numbers depend on what ran before); float16 parameters are never updated (defect); float32 squares
overflow in the float32 moments (precision).

:meth:`MindSporeBatchNormAdapter.unavailable_reason` runs one operation, so an environment with
NumPy 2 reports that instead of failing every cell. Importing this module does not import MindSpore.
"""

from __future__ import annotations

import functools
import inspect
import re
from types import SimpleNamespace

import numpy as np

from ...caseformat import model
from ...judging.capabilities import Capabilities, dtype_pairs
from ...judging.selectors import (epsilon_zero, param_dtype_in, training_step, updates_on_empty_batch,
                                  updates_running_stats)
from ..base import Adapter, Deviation, Mismatches, Raises
from ..environment import PythonEnvironment
from ..findings import float32_variance_overflow

MINDSPORE_ENV = PythonEnvironment("mindspore", ("mindspore==2.10.0", "numpy<2"))

_CELL_BY_RANK = {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}

# The sources of the wheel this row pins (its mindspore/.commit_id: 2d550373 on branch r2.10).
_SOURCE = "https://gitee.com/mindspore/mindspore/blob/v2.10.0/mindspore/"
KERNEL_SOURCE = _SOURCE + "ops/kernel/cpu/mkldnn/batch_norm_cpu_kernel.cc"  # the CPU kernel (oneDNN, float32)
INFER_SOURCE = _SOURCE + "ops/infer/ops_func_impl/batch_norm.cc"  # ops.BatchNorm's argument checks

DEVIATIONS = (
    Deviation(
        name="eps-zero-rejected",
        kind="edge",
        applies=epsilon_zero,
        behaviour=Raises("ValueError", r"the eps must be in \(0,1\]"),
        explanation="ops.BatchNorm (which nn.BatchNorm1d/2d/3d call) checks 0 < eps <= 1 on every call "
                    "(BatchNormFuncImpl::CheckValidation), in training and in inference alike; the canonical "
                    "model divides by sqrt(var) and yields inf/NaN for a constant channel",
        link=INFER_SOURCE,
    ),
    Deviation(
        name="single-value-nan-running-var",
        kind="edge",
        applies=training_step(1, 1),
        behaviour=Mismatches(("running_var", "y", "dx", "dgamma"),
                             "moving_variance becomes NaN (and so do later steps normalized with it)"),
        explanation="the CPU kernel folds variance * bessel_correction into moving_variance with "
                    "bessel_correction = nhw / (nhw - 1) in float: for N == 1 that is 1/0 = inf, and the batch "
                    "variance 0 times inf is NaN; the canonical model keeps the biased variance 0 (max(N - 1, 1))",
        link=KERNEL_SOURCE,
    ),
    Deviation(
        name="empty-batch-shrinks-running-stats",
        kind="defect",
        applies=updates_on_empty_batch,
        behaviour=Mismatches(("running_mean", "running_var", "y", "dx", "dgamma"),
                             "the running statistics change instead of staying unchanged (and later steps "
                             "normalized with them follow)"),
        explanation="an empty training batch still runs the kernel's update, with batch statistics it never "
                    "computed for N == 0: in a fresh process they read 0, so moving = decay * moving (1.5858 -> "
                    "1.4273 at decay 0.9), but after another call they hold what that call left (run after "
                    "degenerate/huge_mixed_sign_float32 in one process, the running mean became -1.07e36), so the "
                    "numbers depend on what ran before; the model leaves the statistics unchanged for N == 0",
        link=KERNEL_SOURCE,
    ),
    Deviation(
        name="float16-parameters-never-updated",
        kind="defect",
        applies=param_dtype_in("float16") & updates_running_stats,
        behaviour=Mismatches(("running_mean", "running_var", "y", "dx", "dgamma"),
                             "moving_mean and moving_variance keep their initial values (and later steps "
                             "normalized with them follow)"),
        explanation="with dtype=float16 a training step normalizes with the batch statistics but leaves the "
                    "float16 moving_mean / moving_variance Parameters at their initial values, without an error "
                    "(measured; float16 inputs with float32 parameters do update). The CPU kernel is registered "
                    "for float32 only (GetOpSupport), so float16 arguments run as float32 casts, and its "
                    "in-place update of the running statistics lands in those casts",
        link=KERNEL_SOURCE,
    ),
    float32_variance_overflow(
        "float32-variance-overflow",
        "the CPU kernel computes the batch moments with oneDNN's batch_normalization_forward in float32: for "
        "|x| ~ 1e37 the variance overflows to inf, so y collapses to beta and the backward gives dx = dgamma = 0",
        KERNEL_SOURCE),
)


@functools.lru_cache(maxsize=None)
def mindspore() -> SimpleNamespace:
    """mindspore, its nn and ops, imported on first use."""
    import mindspore as ms
    from mindspore import nn, ops

    return SimpleNamespace(ms=ms, nn=nn, ops=ops)


def to_tensor(array, name: str):
    """A MindSpore Tensor of dtype ``name`` with the array's exact values."""
    ms = mindspore().ms
    return ms.Tensor(np.ascontiguousarray(np.asarray(array).astype(name)), dtype=getattr(ms, name))


def first_failure() -> str | None:
    """None if one MindSpore operation runs here, else what it raised (with its cause)."""
    ms = mindspore().ms
    try:
        (ms.Tensor(np.zeros((2, 1), np.float32)) + 1).asnumpy()
    except Exception as exc:  # a broken extension raises SystemError / ImportError / RuntimeError
        cause = exc.__cause__
        text = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
        text += f" (caused by {type(cause).__name__}: {(str(cause).splitlines() or [''])[0]})" if cause else ""
        return re.sub(r" at 0x[0-9a-f]+", "", text)  # object addresses would make every report differ
    return None


class MindSporeBatchNormAdapter(Adapter):
    """mindspore.nn.BatchNorm1d / 2d / 3d on the CPU, one cell per case, built with the case's state."""

    name = "mindspore.nn"
    framework = "mindspore"
    extra = "mindspore"
    install_hint = "built automatically in its own environment (bnconform env sync)"
    requires = ("mindspore",)
    python_environment = MINDSPORE_ENV
    device_kinds = ("cpu",)
    decay_parameter = ("momentum", "old")
    notes = ("nn.BatchNorm1d/2d/3d with set_train(); other channel axes moved to 1 and back (NHWC is GPU-only); "
             "gradients by mindspore.vjp; runs in its own environment (mindspore 2.10.0, NumPy < 2)")
    capabilities = Capabilities(
        epsilon_modes=frozenset({"add_inside_sqrt"}), running_variance=frozenset({"bessel"}),
        zero_debias=frozenset({False}), num_updates_schedule=frozenset({False}),
        running_rules=frozenset({"ema"}), separate_scale_center=False, ranks=frozenset({2, 3, 4, 5}),
        step_kinds=frozenset({("batch", True), ("running", False)}),
        dtypes=dtype_pairs(inputs=("float32", "float16")), gradients=frozenset({"batch", "running"}))
    deviations = DEVIATIONS

    def unavailable_reason(self) -> str | None:
        reason = super().unavailable_reason()
        failure = None if reason else first_failure()
        if failure:
            reason = f"mindspore {self.framework_version()} cannot run an operation here: {failure}"
            if int(np.__version__.split(".")[0]) >= 2:
                reason += (f"; the wheel is built against NumPy 1.x and this environment has NumPy {np.__version__} "
                           f"(bnconform runs it in its own environment: {' '.join(MINDSPORE_ENV.requirements)})")
        return reason

    def framework_defaults(self):
        parameters = inspect.signature(mindspore().nn.BatchNorm2d.__init__).parameters
        return {"decay_parameter": parameters["momentum"].default, "epsilon": parameters["eps"].default}

    def run(self, case: model.Case, device: str) -> list[dict]:
        cell = self._cell(case)
        return [self._step(cell, case, step) for step in case.steps]

    def _cell(self, case: model.Case):
        """BatchNorm1d/2d/3d built with the case's knobs and initial state (the initializers)."""
        config, state, ns = case.config, case.initial_state, mindspore()
        dtype = config.param_dtype
        affine = {"gamma_init": to_tensor(state.gamma, dtype), "beta_init": to_tensor(state.beta, dtype)} \
            if config.scale else {}
        return getattr(ns.nn, _CELL_BY_RANK[case.rank])(
            case.channels, eps=config.effective_epsilon, momentum=config.running_stats.decay,
            affine=config.scale, moving_mean_init=to_tensor(state.running_mean, dtype),
            moving_var_init=to_tensor(state.running_var, dtype), dtype=getattr(ns.ms, dtype), **affine)

    def _step(self, cell, case: model.Case, step: model.Step) -> dict:
        """One call in set_train(True) or set_train(False); with dy, mindspore.vjp of that same call."""
        ns, axis = mindspore(), case.config.channel_axis
        cell.set_train(step.is_training)

        def forward(x):
            y = cell(x if axis == 1 else ns.ops.moveaxis(x, axis, 1))
            return y if axis == 1 else ns.ops.moveaxis(y, 1, axis)

        x = to_tensor(step.x, case.config.input_dtype)
        outputs = {}
        if step.dy is None:
            y = forward(x)
        else:
            # the parameters the case has (scale and center switch together): gamma, beta
            layer = cell.bn2d if case.rank == 5 else cell
            weights = [layer.gamma, layer.beta] if case.config.scale else None
            y, vjp_fn = ns.ms.vjp(forward, x, weights=weights)
            grads = vjp_fn(to_tensor(step.dy, case.config.input_dtype))
            if weights is None:
                outputs["dx"] = _single(grads)
            else:
                (dx, (dgamma, dbeta)) = grads
                outputs.update(dx=_single(dx), dgamma=dgamma.asnumpy().copy(), dbeta=dbeta.asnumpy().copy())
        layer = cell.bn2d if case.rank == 5 else cell
        return {"y": y.asnumpy().copy(), **outputs, "running_mean": layer.moving_mean.asnumpy().copy(),
                "running_var": layer.moving_variance.asnumpy().copy()}


def _single(gradient):
    """The one input gradient mindspore.vjp returns (a Tensor, or a 1-tuple of it) as NumPy."""
    while isinstance(gradient, (tuple, list)):
        (gradient,) = gradient
    return gradient.asnumpy().copy()
