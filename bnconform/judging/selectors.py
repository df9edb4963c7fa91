"""Declarative cell selectors: named predicates over (case, device) that say what they select.

A :class:`Selector` pairs a test with the words the report prints for it, and selectors combine
with ``&``, ``|`` and ``~`` (the words combine too), so "applies to" text is derived from the
selector and cannot drift from it. Adapters build their deviation selectors from the shared
predicates below; a predicate that only one framework needs (e.g. "the layer takes its fused
path") is a :class:`Selector` around a named function with a sentence, never a bare lambda.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..caseformat.model import Case


@dataclass(frozen=True)
class Selector:
    """``test(case, device) -> bool`` with ``text``, the phrase the report shows for it."""

    text: str
    test: Callable[[Case, str], bool]

    def __call__(self, case: Case, device: str) -> bool:
        return bool(self.test(case, device))

    def describe(self) -> str:
        return self.text

    def __and__(self, other: "Selector") -> "Selector":
        return Selector(f"{self.text} and {other.text}", lambda c, d: self(c, d) and other(c, d))

    def __or__(self, other: "Selector") -> "Selector":
        return Selector(f"({self.text} or {other.text})", lambda c, d: self(c, d) or other(c, d))

    def __invert__(self) -> "Selector":
        return Selector(f"not ({self.text})", lambda c, d: not self(c, d))


def where(text: str) -> Callable[[Callable[[Case], bool]], Selector]:
    """Decorator: a case predicate ``f(case)`` becomes a Selector described by ``text``."""
    return lambda predicate: Selector(text, lambda case, device: predicate(case))


ANY = Selector("every case", lambda case, device: True)


# --- Steps and batch sizes ----------------------------------------------------------------------

def _steps_with_counts(case: Case):
    return zip(case.steps, case.reduce_counts())


def has_training_step(case: Case, min_count: int | None = None, max_count: int | None = None) -> bool:
    """True if some step normalizes with batch statistics and its N lies in [min_count, max_count]."""
    return any(s.is_training and (min_count is None or n >= min_count) and (max_count is None or n <= max_count)
               for s, n in _steps_with_counts(case))


def training_step(min_count: int | None = None, max_count: int | None = None) -> Selector:
    """Some step normalizes with batch statistics and its N lies in [min_count, max_count]."""
    bounds = {(None, None): "", (1, 1): " of exactly one value per channel (N == 1)",
              (0, 0): " of an empty batch (N == 0)"}
    text = "a training step" + bounds.get((min_count, max_count), f" with {min_count or 0} <= N <= {max_count or 'inf'}")

    return Selector(text, lambda case, device: has_training_step(case, min_count, max_count))


@where("a step that updates the running statistics from an empty batch (N == 0)")
def updates_on_empty_batch(case: Case) -> bool:
    return any(s.update_running_stats and n == 0 for s, n in _steps_with_counts(case))


@where("a step that updates the running statistics from a non-empty batch")
def updates_running_stats(case: Case) -> bool:
    return any(s.update_running_stats and n > 0 for s, n in _steps_with_counts(case))


@where("a non-empty update of a running mean that an earlier update left at +-Inf")
def updates_infinite_running_mean(case: Case) -> bool:
    """Some update of a non-empty batch follows an update whose expected running mean holds +-Inf:
    there the update's form decides between Inf (d r + (1 - d) b) and NaN (r - (r - b)(1 - d))."""
    infinite = False
    for step, n in _steps_with_counts(case):
        if step.update_running_stats and n > 0 and infinite:
            return True
        infinite = infinite or bool(np.isinf(step.expected["running_mean"]).any())
    return False


@where("an empty training batch (N == 0) with an upstream gradient dy and scale on")
def empty_batch_gamma_gradient(case: Case) -> bool:
    """dgamma = sum(dy * xhat) over no elements is 0; a backward that multiplies that empty sum by
    the batch's rsqrt(var + eps) (NaN: var = 0/0) gets 0 * NaN = NaN."""
    return case.config.scale and any(s.is_training and n == 0 and s.dy is not None for s, n in _steps_with_counts(case))


def _empty_steps_with_gradient(case: Case):
    return [s for s, n in _steps_with_counts(case) if n == 0 and s.dy is not None]


@where("a rank-5 empty batch (N == 0) with dy in a training step or with channels last")
def empty_rank5_folded_gradient(case: Case) -> bool:
    """Where TensorFlow's fused gradient kernel hands dx back in its rank-4 working shape: it folds
    a 5-D x to 4-D and returns early for an empty input before unfolding dx."""
    return case.rank == 5 and any(s.is_training or case.config.channel_axis != 1
                                  for s in _empty_steps_with_gradient(case))


@where("a rank-5 channels-first empty batch (N == 0) with dy in inference")
def empty_rank5_transposed_eval_gradient(case: Case) -> bool:
    """Where TensorFlow's inference gradient transposes the kernel's (folded, rank-4) dx back from
    NDHWC with a rank-5 permutation."""
    return case.rank == 5 and case.config.channel_axis == 1 and any(not s.is_training
                                                                    for s in _empty_steps_with_gradient(case))


@where("a step that normalizes with the running statistics while updating them")
def updates_in_inference(case: Case) -> bool:
    return any(s.update_running_stats and not s.is_training for s in case.steps)


@where("a step with batch statistics that must not update the running statistics")
def training_without_update(case: Case) -> bool:
    return any(s.is_training and not s.update_running_stats for s in case.steps)


@where("a step with an upstream gradient dy")
def has_gradient_step(case: Case) -> bool:
    return any(s.dy is not None for s in case.steps)


@where("a case resuming from num_updates > 0")
def resumes_from_count(case: Case) -> bool:
    return case.initial_state.num_updates > 0


# --- Knobs and dtypes ---------------------------------------------------------------------------

def input_dtype_in(*dtypes: str) -> Selector:
    return Selector(f"{' or '.join(dtypes)} input", lambda case, device: case.config.input_dtype in dtypes)


def param_dtype_in(*dtypes: str) -> Selector:
    return Selector(f"{' or '.join(dtypes)} parameters", lambda case, device: case.config.param_dtype in dtypes)


def device_in(*devices: str) -> Selector:
    return Selector(f"on {' or '.join(devices)}", lambda case, device: device in devices)


def rank_in(*ranks: int) -> Selector:
    return Selector(f"rank {' or '.join(map(str, ranks))} input", lambda case, device: case.rank in ranks)


def running_variance_is(kind: str) -> Selector:
    return Selector(f"a {kind} running variance asked for",
                    lambda case, device: case.config.running_stats.variance == kind)


@where("eps == 0 (no epsilon floor)")
def epsilon_zero(case: Case) -> bool:
    return case.config.effective_epsilon <= 0.0


@where("scale or center off")
def affine_partly_off(case: Case) -> bool:
    return not (case.config.scale and case.config.center)


def uses_extension(name: str) -> Selector:
    return Selector(f"the {name} extension", lambda case, device: name in case.extensions)


def case_in(*case_ids: str) -> Selector:
    """For numeric findings that depend on the data of particular cases; the ids are the text."""
    return Selector("the cases " + ", ".join(case_ids), lambda case, device: case.id in case_ids)


# --- Numbers in the inputs ----------------------------------------------------------------------

def _largest_finite_training_input(case: Case) -> float:
    largest = 0.0
    for step in case.steps:
        if step.is_training:
            wide = np.asarray(step.x, dtype=np.float64)
            finite = np.abs(wide[np.isfinite(wide)])
            largest = max(largest, float(finite.max()) if finite.size else 0.0)
    return largest


def squares_overflow(accumulator: str = "float32") -> Selector:
    """A training input (not float64) whose finite values exceed sqrt(max of ``accumulator``), so
    squared deviations accumulated in that dtype overflow to inf (float64 inputs are excluded:
    frameworks accumulate those in float64)."""
    limit = float(np.sqrt(np.finfo(accumulator).max))

    def test(case, device):
        return case.config.input_dtype != "float64" and _largest_finite_training_input(case) > limit
    return Selector(f"training inputs beyond {limit:.2g}, whose squares overflow {accumulator}", test)


def training_channel_moments(case: Case):
    """(|mean|, standard deviation) per channel of every training batch with N >= 2, in float64."""
    for step, n in _steps_with_counts(case):
        if step.is_training and n >= 2:
            axes = tuple(i for i in range(step.x.ndim) if i != case.config.channel_axis)
            x = np.asarray(step.x, dtype=np.float64)
            with np.errstate(invalid="ignore", over="ignore"):
                yield np.abs(x.mean(axis=axes)), x.std(axis=axes)


def mean_far_from_spread(ratio: float, constant: bool = True) -> Selector:
    """A training batch whose per-channel |mean| exceeds ``ratio`` x its standard deviation:
    where E[x^2] - E[x]^2 cancels catastrophically. ``constant=False`` counts only channels with
    a nonzero spread (a clamped one-pass variance is exact on a constant channel)."""
    def test(case, device):
        return any(np.any(np.isfinite(mean) & (mean > ratio * std) & (constant | (std > 0)))
                   for mean, std in training_channel_moments(case))
    which = "a training batch" if constant else "a training batch with a non-constant channel"
    return Selector(f"{which} whose |mean| exceeds {ratio:g} x its spread", test)


def _rounded_mean_shift(case: Case, step) -> np.ndarray:
    """Per channel, how far y moves when the step's batch mean is rounded to the input dtype:
    |mean - round(mean)| * |gamma| / sqrt(var + eps), the same at every element of the channel."""
    from ..caseformat.dtypes import quantize

    mean, var = step.expected["batch_mean"], step.expected["batch_var"]
    gamma = np.abs(case.initial_state.gamma.astype(np.float64)) if case.config.scale else np.ones_like(mean)
    rounded = quantize(mean, case.config.input_dtype).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.abs(mean - rounded) * gamma / np.sqrt(var + case.config.effective_epsilon)


@where("half input with parameters of the same half dtype, where a batch mean rounded to that dtype "
       "moves y beyond its tolerance")
def half_params_rounded_mean_shows(case: Case) -> bool:
    """A training step whose finite batch mean, rounded to the half input dtype, shifts some
    channel's y by more than the tolerance allows at that channel's smallest |y| (a shift of every
    element of a channel is seen where the tolerance is tightest): where keeping the moments in
    the parameters' half dtype shows."""
    config = case.config
    if config.input_dtype not in ("float16", "bfloat16") or config.param_dtype != config.input_dtype:
        return False
    for step in case.steps:
        mean = step.expected.get("batch_mean")
        if not step.is_training or mean is None or not np.isfinite(mean).all():
            continue
        y = np.abs(np.moveaxis(np.asarray(step.expected["y"], dtype=np.float64), config.channel_axis, 0))
        if y.size == 0:
            continue
        tol = step.tolerance["y"]
        allowed = tol["atol"] + tol["rtol"] * y.reshape(len(mean), -1).min(axis=1)
        if (_rounded_mean_shift(case, step) > allowed).any():
            return True
    return False


# --- Observable declarations ----------------------------------------------------------------------

_REPRODUCES: dict[tuple, bool] = {}  # cache key -> answer; cases are immutable once loaded


def oracle_reproduces(case: Case, changed: Callable[[], Case], key: tuple) -> bool:
    """The oracle run on ``changed()`` matches ``case``'s expected results within the case's
    tolerances (an oracle that cannot run the changed case does not); cached under ``key``, which
    must name the case (id and path) and the change."""
    if key not in _REPRODUCES:
        from ..reference import oracle
        from .compare import compare_case

        try:
            mismatches, _ = compare_case(case, oracle.run_case(changed()))
        except (ValueError, ZeroDivisionError, FloatingPointError):
            mismatches = [None]
        _REPRODUCES[key] = not mismatches
    return _REPRODUCES[key]


def changes_results(make_variant: Callable[[Case], Case], text: str) -> Selector:
    """Cases whose expected results the oracle, run on ``make_variant(case)``, misses beyond the
    case's tolerances: the only cells where a MatchesVariant of that variant can be observed (with a
    zero-debiased EMA, say, a float32-rounded decay cancels out of the first update)."""
    return Selector(text, lambda case, device: not oracle_reproduces(
        case, lambda: make_variant(case), (case.id, case.path, "changes_results", text)))
