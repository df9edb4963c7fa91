"""Findings that many frameworks share, declared one way: the same selector, kind, outputs and
wording, with each framework's own name, explanation (where in its code it happens) and link.

* :func:`float32_variance_overflow`: the batch variance of float32 inputs is accumulated in
  float32, so squares of |x - mean| ~ 1e19 and beyond overflow where the float64 oracle stays finite.
* :func:`empty_batch_nan_running_stats`: an empty training batch's moments are 0/0 = NaN and are
  folded into the running statistics, which the model leaves unchanged for N == 0; every later
  step normalized with them inherits the NaN.
"""

from __future__ import annotations

from ..judging.selectors import Selector, squares_overflow, updates_on_empty_batch
from .base import Deviation, Mismatches

OVERFLOW_OUTPUTS = ("y", "running_var", "dx", "dgamma")
INFINITE_VARIANCE = "y collapses to beta, running_var is inf, dx = dgamma = 0"
NAN_STATE_OUTPUTS = ("running_mean", "running_var", "y", "dx", "dgamma")


def float32_variance_overflow(name: str, explanation: str, link: str, effect: str = INFINITE_VARIANCE,
                              outputs: tuple[str, ...] = OVERFLOW_OUTPUTS) -> Deviation:
    """A ``precision`` deviation on the cases whose float32 squares overflow; ``effect`` says what
    the overflowed variance does (an inf variance by default)."""
    return Deviation(name=name, kind="precision", applies=squares_overflow("float32"),
                     behaviour=Mismatches(outputs, f"the float32 variance overflows: {effect}"),
                     explanation=explanation, link=link)


def empty_batch_nan_running_stats(name: str, explanation: str, link: str,
                                  applies: Selector = updates_on_empty_batch, effect: str = "",
                                  outputs: tuple[str, ...] = NAN_STATE_OUTPUTS) -> Deviation:
    """A ``defect`` deviation on the cases that update from an empty batch; ``effect`` adds what
    else the framework does there (a counter that advances, inf instead of NaN)."""
    return Deviation(name=name, kind="defect", applies=applies,
                     behaviour=Mismatches(outputs, f"the running statistics become NaN instead of staying "
                                                   f"unchanged{effect} (and y, dx, dgamma of later steps "
                                                   "normalized with them)"),
                     explanation=explanation, link=link)
