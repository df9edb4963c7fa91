"""tinygrad.nn.BatchNorm, switched between training and inference by tinygrad's TRAINING context.

tinygrad (0.14) has no ``Tensor.training`` attribute any more: ``BatchNorm.__call__`` reads the
``TRAINING`` context variable (``with Context(TRAINING=1)``), which earlier releases spelled
``Tensor.training = True``. With ``track_running_stats`` (the default) a training call normalizes
with the batch moments and updates the running statistics; an inference call normalizes with them.

Translation (canonical knob -> tinygrad argument):

==========================  ==========================================================
channel_axis                must be 1; any other axis is moved to 1 and back (permute)
rank 2 .. 5                 one BatchNorm for every rank (it reduces every axis but 1)
epsilon (+ epsilon_floor)   eps = max(epsilon, epsilon_floor), added inside the rsqrt
scale and center            affine=True (weight = gamma, bias = beta)
scale off and center off    affine=False (weight and bias are None)
rule ema, decay d           momentum = 1 - d (tinygrad weights the NEW batch statistic)
param_dtype                 dtype of weight, bias, running_mean, running_var
input_dtype                 the input tensor's dtype
initial num_updates         num_batches_tracked (a counter tinygrad only increments)
normalize_with batch        Context(TRAINING=1) - always updates the running stats
normalize_with running      Context(TRAINING=0) - never updates them
==========================  ==========================================================

Conventions (read in ``BatchNorm.__call__``): eps inside the square root; the running variance
is Bessel-corrected, ``x.numel() / (x.numel() - C)`` = N / (N - 1), times the biased batch
variance ``mean((x - mean)^2)`` (two passes); no zero-debias, no schedule, no cumulative rule
(momentum is a float). The constructor has one ``affine`` flag, so scale and center switch together.

Gradients: ``y.gradient(x, weight, bias, gradient=dy)`` (tinygrad's own autodiff of the call
that produced y, accumulating nothing) gives dx, dgamma, dbeta, for training and inference
steps. The batch variance is computed from ``batch_mean.detach()`` (d var / d mean = 0 since
sum(x - mean) = 0); the model's dx assumes the same.

Device: the CPU device with its default renderer, CLANG (``DEV=CPU:CLANG``): each kernel is C
source compiled by ``clang`` (``CC``) into an ELF object that tinygrad loads itself; the device
also compiles its queue programs with clang, so without clang tinygrad cannot run on the CPU at
all (gcc does not accept clang's ``--target`` nor ``ext_vector_type``). bfloat16 runs as
tinygrad's emulated dtype (``EMULATED_DTYPES=bfloat16``: stored as 16 bits, computed in float32
as tinygrad also does for a native ``__bf16`` on CPUs without bf16 arithmetic) because Debian's
clang 14 has no ``__bf16`` on x86-64. Kernels are lowered in the host process (``PARALLEL=0``) and
kept on disk between runs (:mod:`.program_cache`), so only a shape or dtype not seen before costs
tinygrad's Python lowering and a clang compile.

Importing this module does not import tinygrad.
"""

from __future__ import annotations

import functools
import inspect
import os
import shutil
from types import SimpleNamespace

import numpy as np

from ...caseformat import model
from ...caseformat.dtypes import numpy_dtype
from ...judging.capabilities import Capabilities
from ...judging.selectors import (half_params_rounded_mean_shows, input_dtype_in, param_dtype_in, training_step,
                                  updates_on_empty_batch)
from ..base import Adapter, Deviation, Mismatches, Raises
from ..findings import empty_batch_nan_running_stats, float32_variance_overflow
from . import program_cache

SOURCE = "https://github.com/tinygrad/tinygrad/blob/master/tinygrad/nn/__init__.py"
SOURCE_SUM = "https://github.com/tinygrad/tinygrad/blob/master/tinygrad/mixin/reduce.py"
# DEV=CPU:CLANG picks the CPU device and its C renderer (CPU=1 / CLANG=1 are rejected as
# deprecated since 0.11); THREADS=0: cases hold a few hundred values, and worker threads on a
# shared 2-core machine only add wake-ups. PARALLEL=0 lowers kernels in the host process instead
# of a spawned worker pool (engine/worker.py) whose workers each re-import tinygrad and are
# replaced every 16 kernels: over a quarter of this adapter's CPU. PARALLEL is not among codegen's
# to_program_config settings, so the kernels are the same.
ENVIRONMENT = {"DEV": "CPU:CLANG", "EMULATED_DTYPES": "bfloat16", "THREADS": "0", "PARALLEL": "0"}


@functools.lru_cache(maxsize=None)
def tinygrad() -> SimpleNamespace:
    """tinygrad's Tensor, dtypes, nn and Context, imported on first use (with its cache of lowered
    kernels loaded from disk, see :mod:`.program_cache`)."""
    from tinygrad import Tensor, dtypes, nn
    from tinygrad.helpers import Context

    program_cache.install()
    return SimpleNamespace(Tensor=Tensor, dtypes=dtypes, nn=nn, Context=Context)


def dtype_name(dtype) -> str:
    """The canonical name of a tinygrad float dtype (tinygrad calls float32 "float")."""
    dtypes = tinygrad().dtypes
    return next(name for name in ("float64", "float32", "float16", "bfloat16") if getattr(dtypes, name) == dtype)


def to_tensor(array, name: str):
    """A tinygrad Tensor of dtype ``name`` holding the array's exact values (bfloat16 travels as
    float32, which holds every bfloat16 value, and is cast back exactly)."""
    tg = tinygrad()
    values = np.ascontiguousarray(np.asarray(array).astype(np.float32 if name == "bfloat16" else numpy_dtype(name)))
    return tg.Tensor(values).cast(getattr(tg.dtypes, name))


def to_numpy(tensor) -> np.ndarray:
    """NumPy value of a realized tensor; bfloat16 widened to float32 (exact)."""
    tg = tinygrad()
    if tensor.dtype == tg.dtypes.bfloat16:
        tensor = tensor.cast(tg.dtypes.float32)
    return np.array(tensor.numpy(), copy=True)


def channels_first_order(rank: int, axis: int) -> list[int]:
    """A permutation putting ``axis`` at position 1 (applied to x); its inverse restores y."""
    rest = [a for a in range(rank) if a != axis]
    return [rest[0], axis, *rest[1:]]


def inverse(order: list[int]) -> list[int]:
    return [order.index(i) for i in range(len(order))]


class TinygradBatchNormAdapter(Adapter):
    """tinygrad.nn.BatchNorm on tinygrad's CPU device (clang), one module per case."""

    name = "tinygrad.nn"
    framework = "tinygrad"
    extra = "tinygrad"
    requires = ("tinygrad",)
    device_kinds = ("cpu",)
    environment = ENVIRONMENT
    decay_parameter = ("momentum", "new")
    notes = ("nn.BatchNorm under Context(TRAINING=1/0) on DEV=CPU:CLANG (kernels compiled by clang); other "
             "channel axes moved to 1 and back; bfloat16 via tinygrad's EMULATED_DTYPES")
    speed_note = ("each call's lazy graph is scheduled in Python (~40 ms CPU a step over the matrix, kernels cached); "
                  "a new kernel is also lowered in Python (~90 ms) and compiled by clang, both then kept on disk")
    capabilities = Capabilities(
        epsilon_modes=frozenset({"add_inside_sqrt"}), running_variance=frozenset({"bessel"}),
        zero_debias=frozenset({False}), num_updates_schedule=frozenset({False}),
        running_rules=frozenset({"ema"}), separate_scale_center=False,
        step_kinds=frozenset({("batch", True), ("running", False)}),
        gradients=frozenset({"batch", "running"}))
    deviations = (
        Deviation(
            name="single-value-per-channel-raises",
            kind="edge",
            applies=training_step(1, 1),
            behaviour=Raises("ZeroDivisionError", "division by zero"),
            explanation="the Bessel factor x.numel() / (x.numel() - x.shape[1]) is Python float arithmetic, which "
                        "raises for N == 1; the canonical model gives y = beta and keeps the biased variance 0",
            link=SOURCE,
        ),
        Deviation(
            name="half-batch-statistics",
            kind="dtype",
            applies=input_dtype_in("float16", "bfloat16") & param_dtype_in("float32") & training_step(2, None),
            behaviour=Mismatches(("running_mean", "running_var", "dgamma", "y"),
                                 "float32 running stats (and dgamma) carry half rounding; a half overflow collapses y"),
            explanation="calc_stats computes the batch mean and variance in the input's half dtype (Tensor.sum "
                        "accumulates in float32 but casts back to half; (x - mean)^2 is squared in half, inf beyond "
                        "|x - mean| ~ 256 in float16) and momentum * batch_mean is a half product, so the float32 "
                        "running stats are updated from half-rounded statistics",
            link=SOURCE_SUM,
        ),
        Deviation(
            name="half-parameters-half-batch-mean",
            kind="dtype",
            applies=half_params_rounded_mean_shows,
            behaviour=Mismatches(("y",), "y normalized with the batch mean (and variance) rounded to the half dtype"),
            explanation="with weight, bias and running stats in the input's half dtype as well: calc_stats's x.mean "
                        "accumulates in float32 but returns the half dtype, the variance is taken about that rounded "
                        "mean, and x.batchnorm(weight, bias, mean, invstd) applies them in half, so y carries "
                        "|mean - round(mean)| * |gamma| / sigma (found by bnconform fuzz; y off by 0.019 / 0.28, as "
                        "torch's CPU kernel)",
            link=SOURCE,
        ),
        float32_variance_overflow(
            "float32-variance-overflow",
            "calc_stats squares x - mean in the input dtype (float32): for |x| ~ 1e37 the variance is inf, "
            "rsqrt gives 0 and y = beta, and the running variance becomes inf where the exact value is ~2e73",
            SOURCE),
        empty_batch_nan_running_stats(
            "empty-batch-nan-running-stats",
            "__call__ updates the running stats from the mean of an empty batch (0/0 = NaN) with no "
            "N == 0 check, and increments num_batches_tracked; the model leaves the state unchanged",
            SOURCE, applies=updates_on_empty_batch & training_step(0, 0), effect=", the counter counts the batch",
            outputs=("running_mean", "running_var", "num_updates", "y", "dx", "dgamma")),
    )

    @classmethod
    def missing_tool(cls) -> str | None:
        compiler = os.environ.get("CC", "clang")
        if shutil.which(compiler) is None:
            return (f"tinygrad's CPU device compiles every kernel with clang ({compiler!r}, from $CC) and it is not "
                    "on PATH; install it (Debian: apt-get install clang)")
        return None

    def framework_defaults(self):
        parameters = inspect.signature(tinygrad().nn.BatchNorm.__init__).parameters
        return {"decay_parameter": parameters["momentum"].default, "epsilon": parameters["eps"].default}

    def run(self, case: model.Case, device: str) -> list[dict]:
        try:
            module = self._module(case)
            return [self._step(module, case, step) for step in case.steps]
        finally:
            program_cache.save()

    def _module(self, case: model.Case):
        """A BatchNorm holding the case's initial state in the param dtype (a module is a few
        attributes; the compiled kernels are what tinygrad caches, per kernel source)."""
        config, state, tg = case.config, case.initial_state, tinygrad()
        module = tg.nn.BatchNorm(case.channels, eps=config.effective_epsilon, affine=config.scale,
                                 track_running_stats=True, momentum=1.0 - config.running_stats.decay)
        dtype = config.param_dtype
        if config.scale:
            module.weight, module.bias = to_tensor(state.gamma, dtype), to_tensor(state.beta, dtype)
        module.running_mean = to_tensor(state.running_mean, dtype).realize()
        module.running_var = to_tensor(state.running_var, dtype).realize()
        module.num_batches_tracked = tg.Tensor(state.num_updates, dtype=tg.dtypes.long)
        return module

    def _step(self, module, case: model.Case, step: model.Step) -> dict:
        """One call under Context(TRAINING=...); with dy, the gradient of that same call."""
        tg, axis = tinygrad(), case.config.channel_axis
        order = channels_first_order(case.rank, axis)
        x = to_tensor(step.x, case.config.input_dtype)
        with tg.Context(TRAINING=int(step.is_training)):
            y = module(x.permute(order)).permute(inverse(order))
            out = {"y": to_numpy(y)}
            if step.dy is not None:
                out.update(self._gradients(module, x, y, step))
        return {**out, "running_mean": to_numpy(module.running_mean), "running_var": to_numpy(module.running_var),
                "num_updates": int(module.num_batches_tracked.item())}

    @staticmethod
    def _gradients(module, x, y, step: model.Step) -> dict:
        """d(sum(dy * y)) / d(x, weight, bias) by ``Tensor.gradient`` with cotangent dy (y's dtype)."""
        wrt = {"dx": x, "dgamma": module.weight, "dbeta": module.bias}
        names = [key for key, tensor in wrt.items() if tensor is not None]
        dy = to_tensor(step.dy, dtype_name(y.dtype))
        grads = y.gradient(*[wrt[key] for key in names], gradient=dy)
        return {key: to_numpy(grad) for key, grad in zip(names, grads)}
