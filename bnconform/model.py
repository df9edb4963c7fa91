"""The canonical Batch Normalization model: every knob a case can pin down, with one meaning.

A case is a :class:`Config`, an initial :class:`State` and a sequence of :class:`Step`.
For the channel axis ``a`` of an input ``x`` of rank R, statistics reduce over every other axis;
``N`` is the number of elements per channel (the product of the non-channel dimensions).

Forward, with ``eps_eff = max(epsilon, epsilon_floor)`` and (mu, var) either the biased batch
moments or the running statistics (``Step.normalize_with``)::

    add_inside_sqrt:   y = gamma * (x - mu) / sqrt(var + eps_eff) + beta
    add_outside_sqrt:  y = gamma * (x - mu) / (sqrt(var) + eps_eff) + beta
    max_inside_sqrt:   y = gamma * (x - mu) / sqrt(max(var, eps_eff)) + beta

gamma is 1 when ``scale`` is off and beta is 0 when ``center`` is off.

Running statistics (when ``Step.update_running_stats``; v is the batch variance, Bessel-corrected
``v * N / max(N - 1, 1)`` when ``RunningStats.variance == "bessel"``; n = updates done before)::

    ema:            r <- d * r + (1 - d) * b,  d = decay (weight on the OLD statistic)
    schedule:       d_n = min(decay, (1 + n) / (10 + n))             (TF num_updates)
    zero_debias:    z <- d * z + (1 - d) * b, z_0 = 0;  r = z / (1 - prod(d_1..d_t))
    cumulative:     r <- r + (b - r) / (n + 1)                          (torch momentum=None)

A batch with N == 0 carries no information: y is empty and the running state is unchanged.
See docs/semantics.md for the reasoning behind each choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

EPSILON_MODES = ("add_inside_sqrt", "add_outside_sqrt", "max_inside_sqrt")
RUNNING_RULES = ("ema", "cumulative")
VARIANCE_KINDS = ("biased", "bessel")
NORMALIZE_WITH = ("batch", "running")
OUTPUT_KEYS = ("y", "batch_mean", "batch_var", "running_mean", "running_var")


@dataclass(frozen=True)
class RunningStats:
    """How the running statistics are updated (see the module docstring for formulas)."""

    rule: str = "ema"
    decay: float | None = 0.9
    variance: str = "bessel"
    zero_debias: bool = False
    num_updates_schedule: bool = False


@dataclass(frozen=True)
class Config:
    """The framework-independent knobs of one BN layer."""

    channel_axis: int
    epsilon: float = 1e-5
    epsilon_mode: str = "add_inside_sqrt"
    epsilon_floor: float = 0.0
    scale: bool = True
    center: bool = True
    input_dtype: str = "float32"
    param_dtype: str = "float32"
    running_stats: RunningStats = field(default_factory=RunningStats)

    @property
    def effective_epsilon(self) -> float:
        return max(self.epsilon, self.epsilon_floor)

    def with_running(self, **changes) -> "Config":
        """A copy with some running-statistics knobs changed (used by declared deviations)."""
        return replace(self, running_stats=replace(self.running_stats, **changes))


@dataclass
class State:
    """Parameters and running statistics, each a 1-D array of length C in the param dtype.

    ``num_updates`` counts the running-statistics updates done so far (torch's
    num_batches_tracked, TF's EMA step). gamma and beta are stored even when ``scale`` or
    ``center`` is off, with values other than 1 and 0, so that ignoring the knob is caught.
    """

    gamma: np.ndarray
    beta: np.ndarray
    running_mean: np.ndarray
    running_var: np.ndarray
    num_updates: int = 0

    def copy(self) -> "State":
        return State(self.gamma.copy(), self.beta.copy(), self.running_mean.copy(),
                     self.running_var.copy(), self.num_updates)


@dataclass
class Step:
    """One call of the layer: an input, which statistics normalize it, whether stats update.

    ``expected`` maps output names (see OUTPUT_KEYS, plus ``num_updates``) to float64 arrays
    (None where undefined, e.g. batch moments of an empty batch or of an eval step);
    ``tolerance`` maps the same names to ``{"rtol": r, "atol": a}``.
    """

    normalize_with: str
    update_running_stats: bool
    x: np.ndarray
    expected: dict = field(default_factory=dict)
    tolerance: dict = field(default_factory=dict)

    @property
    def is_training(self) -> bool:
        """Normalizes with batch statistics (what frameworks call training mode)."""
        return self.normalize_with == "batch"


@dataclass
class Case:
    """A named golden vector: config, initial state, steps with inputs and expected results."""

    id: str
    family: str
    description: str
    config: Config
    initial_state: State
    steps: list[Step]
    path: str | None = None

    @property
    def rank(self) -> int:
        return self.steps[0].x.ndim

    @property
    def channels(self) -> int:
        return int(self.initial_state.gamma.shape[0])

    @property
    def channels_last(self) -> bool:
        return self.config.channel_axis == self.rank - 1 and self.rank > 2

    def reduce_counts(self) -> list[int]:
        """N (elements per channel) of each step."""
        return [count_per_channel(s.x.shape, self.config.channel_axis) for s in self.steps]


def count_per_channel(shape, axis) -> int:
    """N: the product of every dimension but the channel axis."""
    return int(np.prod([d for i, d in enumerate(shape) if i != axis], dtype=np.int64))
