"""mindspore.nn.BatchNorm1d / BatchNorm2d cells, driven through set_train(True / False), on the CPU.

Translation (canonical knob -> MindSpore argument):

==========================  ==========================================================
channel_axis                must be 1 (data_format='NHWC' is GPU-only: the constructor
                            raises on the CPU), so other axes are moved to 1 and back
                            (ops.moveaxis)
rank 2 / 3 / 4              BatchNorm1d / BatchNorm1d / BatchNorm2d
epsilon (+ epsilon_floor)   eps = max(epsilon, epsilon_floor)
scale and center            affine=True, gamma_init = gamma, beta_init = beta
scale off and center off    affine=False (gamma 1 and beta 0, not trainable)
rule ema, decay d           momentum = d (MindSpore weights the OLD statistic; the cell
                            passes 1 - momentum to ops.BatchNorm)
param_dtype                 dtype= (gamma, beta, moving_mean, moving_variance)
initial running stats       moving_mean_init, moving_var_init
normalize_with batch        set_train(True), use_batch_statistics=None: updates them
normalize_with running      set_train(False): never updates them
==========================  ==========================================================

The initial state goes in through the constructor's own initializers, so nothing is written into
a cell after it is built. Capabilities: ops.BatchNorm takes float16 and float32 only (float64 and
bfloat16 raise TypeError); nn.BatchNorm3d is not offered (in 2.10 it keeps its statistics on an
inner BatchNorm2d and reshapes to rank 4); one ``affine`` flag; no training step without an
update (use_batch_statistics=True still updates); no cumulative rule, zero-debias or schedule.
The running variance kind and eps placement are what the CPU kernel does: eps inside the square
root and, as measured here, a Bessel-corrected running variance.

Forward only: gradients are not wired (cases with dy are unsupported).

NumPy: the 2.10.0 wheel's C++ extension is built against NumPy 1.x; with NumPy 2 ``import
mindspore`` succeeds but the first operation fails ("numpy.core.multiarray failed to import"), so
:meth:`MindSporeBatchNormAdapter.unavailable_reason` runs one operation and reports that.
Importing this module does not import MindSpore.
"""

from __future__ import annotations

import functools
import inspect
import re
from types import SimpleNamespace

import numpy as np

from ...caseformat import model
from ...judging.capabilities import Capabilities, dtype_pairs
from ..base import Adapter

_CELL_BY_RANK = {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d"}


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
    """mindspore.nn.BatchNorm1d / 2d on the CPU, one cell per case, built with the case's state."""

    name = "mindspore.nn"
    framework = "mindspore"
    extra = "mindspore"
    requires = ("mindspore",)
    device_kinds = ("cpu",)
    decay_parameter = ("momentum", "old")
    notes = ("nn.BatchNorm1d/2d with set_train(); other channel axes moved to 1 and back (NHWC is GPU-only); "
             "needs NumPy < 2 (the 2.10 wheel is built against NumPy 1.x); forward only")
    capabilities = Capabilities(
        epsilon_modes=frozenset({"add_inside_sqrt"}), running_variance=frozenset({"bessel"}),
        zero_debias=frozenset({False}), num_updates_schedule=frozenset({False}),
        running_rules=frozenset({"ema"}), separate_scale_center=False, ranks=frozenset({2, 3, 4}),
        step_kinds=frozenset({("batch", True), ("running", False)}),
        dtypes=dtype_pairs(inputs=("float32", "float16")))

    def unavailable_reason(self) -> str | None:
        reason = super().unavailable_reason()
        failure = None if reason else first_failure()
        if failure:
            reason = f"mindspore {self.framework_version()} cannot run an operation here: {failure}"
            if int(np.__version__.split(".")[0]) >= 2:
                reason += (f"; the wheel is built against NumPy 1.x and this environment has NumPy {np.__version__} "
                           "(pip install 'bnconform[mindspore]' in an environment of its own: it pins numpy<2)")
        return reason

    def framework_defaults(self):
        parameters = inspect.signature(mindspore().nn.BatchNorm2d.__init__).parameters
        return {"decay_parameter": parameters["momentum"].default, "epsilon": parameters["eps"].default}

    def run(self, case: model.Case, device: str) -> list[dict]:
        cell = self._cell(case)
        return [self._step(cell, case, step) for step in case.steps]

    def _cell(self, case: model.Case):
        """BatchNorm1d/2d built with the case's knobs and initial state (the initializers)."""
        config, state, ns = case.config, case.initial_state, mindspore()
        dtype = config.param_dtype
        affine = {"gamma_init": to_tensor(state.gamma, dtype), "beta_init": to_tensor(state.beta, dtype)} \
            if config.scale else {}
        return getattr(ns.nn, _CELL_BY_RANK[case.rank])(
            case.channels, eps=config.effective_epsilon, momentum=config.running_stats.decay,
            affine=config.scale, moving_mean_init=to_tensor(state.running_mean, dtype),
            moving_var_init=to_tensor(state.running_var, dtype), dtype=getattr(ns.ms, dtype), **affine)

    def _step(self, cell, case: model.Case, step: model.Step) -> dict:
        """One call in set_train(True) or set_train(False)."""
        ops, axis = mindspore().ops, case.config.channel_axis
        cell.set_train(step.is_training)
        x = to_tensor(step.x, case.config.input_dtype)
        y = cell(x if axis == 1 else ops.moveaxis(x, axis, 1))
        y = y if axis == 1 else ops.moveaxis(y, 1, axis)
        return {"y": y.asnumpy().copy(), "running_mean": cell.moving_mean.asnumpy().copy(),
                "running_var": cell.moving_variance.asnumpy().copy()}
