"""torch.nn.BatchNorm1d / 2d / 3d run through ``torch.compile`` (TorchDynamo + Inductor): torch.nn+compile.

Everything but the module call is torch.nn's (:class:`~.nn.TorchModuleAdapter`: the translation
table, the cached module reset to the case's state, train() / eval()). The call goes through
``torch.compile(module, dynamic=True, fullgraph=True)``, built once per module object and kept, so
the compiled program reads and updates that module's running statistics and num_batches_tracked
(the in-place updates are part of the graph), and a step with dy differentiates the compiled
program (AOTAutograd's backward graph, compiled by Inductor too). Dynamo recompiles per train /
eval, input dtype, rank, grad mode and 0/1-sized dimensions; modules with equal attributes share them.

``fullgraph=True``: a graph break raises instead of running part of forward() eagerly, so a cell
that passes ran compiled code. Without it, ``momentum=None`` (the cumulative rule) would silently
run all of BatchNorm.forward eagerly: Dynamo breaks the graph at ``float(num_batches_tracked)``
and, as the break sits in an inlined frame, runs the module uncompiled (measured: no graph
compiled). The recompile limit (8 programs per code object, which every module shares) is raised
for the call, and hitting it raises (``fail_on_recompile_limit_hit``) rather than falling back to eager.

What Inductor computes differs from the eager CPU kernel (torch/_decomp/decompositions.py,
``native_batch_norm_helper``, lowered by Inductor): the batch moments come from ``var_mean``, an
Inductor Welford reduction in float32 for float32 and half inputs (precision; an Inf element makes
the mean NaN), and on CPU the saved mean and 1/sigma that the backward reuses are rounded to a
half input's dtype (dgamma moves). Errors raised by F.batch_norm's checks surface at trace time,
wrapped by Dynamo in ``TorchRuntimeError``. Each is a declared deviation below.
"""

from __future__ import annotations

import contextlib
import logging
import warnings

import numpy as np

from ...caseformat import model
from ...caseformat.dtypes import quantize
from ...judging.selectors import (device_in, epsilon_zero, mean_far_from_spread, param_dtype_in, training_step,
                                  where)
from ..base import Deviation, Mismatches, Raises
from ..findings import float32_variance_overflow
from .common import torch
from .functional import TorchFunctionalAdapter
from .nn import TorchModuleAdapter

# The installed torch 2.13.0 was built from this commit (torch.version.git_version).
_AT = "https://github.com/pytorch/pytorch/blob/cf30153c4c131c8164ee7798e5022d810682e2cb/"
DECOMPOSITION = _AT + "torch/_decomp/decompositions.py#L2077"  # native_batch_norm_helper
WELFORD = _AT + "torch/csrc/inductor/cpp_prefix.h#L230"  # welford_combine(acc, data): one element
FAKE_TENSOR_ERRORS = _AT + "torch/_dynamo/utils.py#L3942"  # get_fake_value: wraps the op's error
ISSUE_CUMULATIVE = "https://github.com/pytorch/pytorch/issues/194504"
ISSUE_FLOAT32_VARIANCE = "https://github.com/pytorch/pytorch/issues/197089"
_QUIET_LOGGERS = ("torch._dynamo", "torch._inductor", "torch.fx.experimental.symbolic_shapes")


@where("the cumulative rule (momentum=None) and a training step")
def _cumulative_training(case: model.Case) -> bool:
    return case.config.running_stats.rule == "cumulative" and any(step.is_training for step in case.steps)


@where("an update from a training batch whose expected mean is +-Inf in some channel")
def _updates_from_infinite_mean(case: model.Case) -> bool:
    """Welford's running mean turns NaN once a finite element follows the Inf (Inf - Inf)."""
    return any(step.update_running_stats and step.expected.get("batch_mean") is not None  # None: N == 0
               and np.isinf(step.expected["batch_mean"]).any() for step in case.steps)


@where("half input of rank 3 to 5, scale on, and a training step with dy whose batch mean and 1/sigma "
       "rounded to the input dtype move dgamma beyond its tolerance")
def _half_saved_moments_move_dgamma(case: model.Case) -> bool:
    """dgamma = rstd * sum(dy (x - mean)); the backward's rstd and mean rounded to the input dtype
    give rstd_r * (sum(dy (x - mean)) + (mean - mean_r) * sum(dy)) instead. Rank 2 is left out:
    there AOTAutograd's partitioner recomputes the moments inside the fused backward kernel, where
    Inductor drops the round trip through the half dtype (measured: dgamma equals eager's)."""
    config = case.config
    if config.input_dtype not in ("float16", "bfloat16") or not config.scale or case.rank < 3:
        return False
    return any(_rounded_dgamma_error(case, step) for step, n in zip(case.steps, case.reduce_counts())
               if step.is_training and step.dy is not None and n > 0)


def _rounded_dgamma_error(case: model.Case, step: model.Step) -> bool:
    """Whether the saved moments rounded to the input dtype move some channel's dgamma past its tolerance."""
    config, expected = case.config, step.expected
    mean, dgamma = expected["batch_mean"], np.asarray(expected["dgamma"], dtype=np.float64)
    axes = tuple(a for a in range(step.x.ndim) if a != config.channel_axis)
    sum_dy = np.asarray(step.dy, dtype=np.float64).sum(axis=axes)
    with np.errstate(all="ignore"):
        rstd = 1.0 / np.sqrt(expected["batch_var"] + config.effective_epsilon)
        rstd_r, mean_r = (quantize(v, config.input_dtype).astype(np.float64) for v in (rstd, mean))
        moved = rstd_r * (dgamma / rstd + (mean - mean_r) * sum_dy)
        tol = step.tolerance["dgamma"]
        return bool((np.abs(moved - dgamma) > tol["atol"] + tol["rtol"] * np.abs(dgamma)).any())


def _raised_while_tracing(name: str, message: str, explanation: str, link: str, applies) -> Deviation:
    """An F.batch_norm check that raises on the fake tensors Dynamo traces with (an ``edge``)."""
    return Deviation(
        name=name, kind="edge", applies=applies,
        behaviour=Raises("TorchRuntimeError", message),
        explanation=explanation + ". Dynamo runs the call on fake tensors while tracing, where the check raises, "
                    "and re-raises it as torch._dynamo.exc.TorchRuntimeError ('RuntimeError when making fake "
                    "tensor call'), a RuntimeError: an `except ValueError` around the eager call no longer catches it",
        link=link)


def compiler_findings(api: str) -> tuple[Deviation, ...]:
    """What torch.compile of ``api`` (nn.BatchNorm or F.batch_norm: the same decomposition) shows on CPU."""
    return (
        _raised_while_tracing(
            "single-value-per-channel-raises-traced", "Expected more than 1 value per channel when training",
            f"torch.compile'd {api} refuses one value per channel in training as eager does (F.batch_norm's "
            "_verify_batch_size; the model gives y = beta)", FAKE_TENSOR_ERRORS, training_step(1, 1)),
        _raised_while_tracing(
            "eps-zero-rejected-in-training-traced", "eps must be positive during training",
            f"torch.compile'd {api} rejects eps <= 0 in training as eager does since torch 2.10 (the model "
            "divides by sqrt(var) and yields inf/NaN for constant channels)", FAKE_TENSOR_ERRORS,
            epsilon_zero & training_step()),
    ) + _INDUCTOR_FINDINGS


_INDUCTOR_FINDINGS = (
    Deviation(
        name="welford-float32-variance",
        kind="precision",
        applies=param_dtype_in("float32", "float64") & mean_far_from_spread(1000, constant=False) & device_in("cpu"),
        behaviour=Mismatches(("running_var", "y", "dx", "dgamma"),
                             "the batch variance loses digits to the mean: running_var off by ~1e-5 relative "
                             "(float32) or ~1e-10 (float64)"),
        explanation="Inductor lowers the decomposition's torch.var_mean to a one-pass Welford reduction in the "
                    "input's accumulate dtype (float32 for float32 and half inputs); each element's update "
                    "mean += (x - mean) / n rounds a mean of ~1e4 (float32) or ~1e8 (float64) by ulp(mean), which "
                    "M2 inherits, where the eager CPU kernel sums (x - mean)^2 about the finished mean (measured: "
                    "the compiled running_var equals a sequential float32 Welford, 2e-5 relative off for |mean| = "
                    "1e4 x spread, while eager matches the two-pass value)",
        link=ISSUE_FLOAT32_VARIANCE,
    ),
    Deviation(
        name="welford-infinite-mean-nan",
        kind="edge",
        applies=_updates_from_infinite_mean & device_in("cpu"),
        behaviour=Mismatches(("running_mean", "y"), "the running mean becomes NaN where the batch mean is +-Inf"),
        explanation="Inductor's Welford reduction (welford_combine in cpp_prefix.h) updates the mean element by "
                    "element: after an Inf the next finite x gives delta = x - Inf = -Inf and mean = Inf + (-Inf) / n "
                    "= NaN, so the batch mean of a channel holding one Inf is NaN (eager's sum / N is Inf) and the "
                    "running mean updated from it is NaN where the model's is +-Inf",
        link=WELFORD,
    ),
    Deviation(
        name="half-input-saved-moments-rounded",
        kind="dtype",
        applies=_half_saved_moments_move_dgamma & device_in("cpu"),
        behaviour=Mismatches(("dgamma", "dx"), "dgamma computed with the batch mean and 1/sigma rounded to the "
                                               "half input dtype"),
        explanation="native_batch_norm_helper casts save_mean and save_rstd to the input dtype on CPU "
                    "(`if input.device.type == 'cpu': save_mean = save_mean.to(dtype=input.dtype)`), and the "
                    "backward decomposition computes dgamma = sum(dy (x - save_mean)) * save_rstd from those "
                    "rounded values, while eager's mixed-type kernel keeps them in float32 (measured: dgamma 0.7% "
                    "off for bfloat16, 0.04% for float16, with float32 parameters, equal to that rounding; y and "
                    "the running statistics use the unrounded moments). Ranks 3 to 5 only: for rank 2 the "
                    "partitioner recomputes the moments in the fused backward kernel and Inductor drops the "
                    "cast (torch._inductor.config.emulate_precision_casts is off), so nothing is rounded",
        link=DECOMPOSITION,
    ),
    float32_variance_overflow(
        "float32-variance-overflow-welford",
        "Inductor's Welford reduction accumulates float32 input moments in float32 (M2 += delta * (x - mean)): "
        "for |x| ~ 1e37 M2 is inf, so y collapses to beta and running_var is inf where the exact value is ~2e73 "
        "(eager CPU shows the same overflow in its own float32 Welford)",
        ISSUE_FLOAT32_VARIANCE),
)

CUMULATIVE_NOT_COMPILABLE = Deviation(
    name="cumulative-rule-not-compilable",
    kind="defect",
    applies=_cumulative_training,
    behaviour=Raises("UserError", "Could not guard on data-dependent expression"),
    explanation="with momentum=None BatchNorm.forward computes 1.0 / float(self.num_batches_tracked), a "
                "data-dependent Python float that fullgraph=True cannot capture (Dynamo fails to guard on it "
                "inside F.batch_norm); without fullgraph the graph breaks there and the whole forward() runs "
                "eagerly, so the cumulative average is never compiled",
    link=ISSUE_CUMULATIVE,
)
_EAGER_KEPT = ("empty-batch-counted",)  # torch.nn's deviations that the compiled module still shows


@contextlib.contextmanager
def _quiet_compilation():
    """Compiler warnings and Dynamo / Inductor log lines stay out of the user's terminal."""
    loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def _compile(function):
    """torch.compile of ``function`` (dynamic shapes, one graph), with a recompile limit raised for
    the call: hitting the limit raises instead of falling back to eager."""
    t = torch()
    compiled = t.compile(function, dynamic=True, fullgraph=True)

    def call(*args):
        with _quiet_compilation(), t._dynamo.config.patch(recompile_limit=4096, accumulated_recompile_limit=65536,
                                                          fail_on_recompile_limit_hit=True):
            return compiled(*args)
    call.compiled = compiled
    return call


def _functional_batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps):
    """F.batch_norm with the adapter's positional arguments (what a user compiles: a function that
    calls it; torch.compile(F.batch_norm) traces the same graph)."""
    return torch().nn.functional.batch_norm(x, running_mean, running_var, weight, bias, training=training,
                                            momentum=momentum, eps=eps)


class TorchCompiledModuleAdapter(TorchModuleAdapter):
    """torch.nn's adapter whose module call is the module's ``torch.compile`` program (Inductor)."""

    name = "torch.nn+compile"
    execution_mode = "compiled"
    eager_row = "torch.nn"
    # Inductor decomposes batch norm, so cuDNN on or off is the same program: no 'cuda-nocudnn'.
    device_kinds = ("cpu", "cuda")
    notes = ("torch.compile(module, dynamic=True, fullgraph=True) of nn.BatchNorm1d/2d/3d (Inductor; C++ on CPU), "
             "one compiled module per torch.nn module, recompiled per train/eval, dtype, rank and grad mode")
    speed_note = ("~1.5 s median per case with a cold Inductor cache (the first compile ~30 s, the row ~5 min), "
                  "~0.1 s warm: Dynamo traces and Inductor builds a C++ kernel per program (train/eval, dtype, "
                  "rank, grad mode, attributes); its on-disk cache serves later processes")
    deviations = (tuple(d for d in TorchModuleAdapter.deviations if d.name in _EAGER_KEPT)
                  + (CUMULATIVE_NOT_COMPILABLE,) + compiler_findings("nn.BatchNorm"))

    def __init__(self):
        super().__init__()
        self._compiled = {}

    def _forward(self, module, x):
        """The module's compiled program on x (built on first use, kept per module object)."""
        if module not in self._compiled:
            self._compiled[module] = _compile(module)
        return self._compiled[module](x)


class TorchCompiledFunctionalAdapter(TorchFunctionalAdapter):
    """torch.functional's adapter whose F.batch_norm call is a ``torch.compile`` program (Inductor)."""

    name = "torch.functional+compile"
    execution_mode = "compiled"
    eager_row = "torch.functional"
    device_kinds = ("cpu", "cuda")
    notes = ("torch.compile(dynamic=True, fullgraph=True) of a function calling F.batch_norm (Inductor; C++ on CPU); "
             "the running statistics are inputs it updates in place; recompiled per training flag, None "
             "arguments, dtype, rank and grad mode")
    speed_note = TorchCompiledModuleAdapter.speed_note
    deviations = compiler_findings("F.batch_norm")

    def __init__(self):
        super().__init__()
        self._program = None

    def _batch_norm(self, x, running_mean, running_var, weight, bias, training, momentum, eps):
        """The compiled F.batch_norm call (one program cache for every case)."""
        if self._program is None:
            self._program = _compile(_functional_batch_norm)
        return self._program(x, running_mean, running_var, weight, bias, training, momentum, eps)
