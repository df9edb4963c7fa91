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

Four optional extensions (absent = off; at most one per case; see EXTENSIONS):

* ``Config.renorm`` (Batch Renormalization, Ioffe 2017). With sigma_B = sqrt(v_B + eps_eff) and
  the renorm statistics (m_R, s_R) from BEFORE the step, s = max(s_R, sqrt(eps_eff))::

      r = clip(sigma_B / s, rmin, rmax),  d = clip((mu_B - m_R) / s, -dmax, dmax)
      y = gamma * ((x - mu_B) / sigma_B * r + d) + beta        (r, d are constants)

  An update then does m_R <- e m_R + (1-e) mu_B, s_R <- e s_R + (1-e) sigma_B (e = renorm.decay),
  running_mean <- EMA(decay) of mu_B, running_stddev S <- d S + (1-d) sqrt(v + eps_eff) (v biased
  or Bessel as RunningStats.variance says) and running_var <- max(S^2 - eps_eff, 0). Inference
  uses running_mean / running_var, with no correction.
* ``Config.virtual_batch_size`` (ghost batches, Hoffer et al. 2017): in a batch-normalized step
  the samples (axis 0) are split into G = B / virtual_batch_size ghost batches -- "contiguous":
  samples [g*V, (g+1)*V); "interleaved" (tf_keras' reshape to [V, G, ...]): samples g, g+G, ...
  -- and each ghost batch is normalized with its own biased moments. One update per step folds
  in the mean of the G ghost means and of the G ghost variances (Bessel factor M / (M - 1) with
  M = elements per channel in ONE ghost batch). batch_mean / batch_var are undefined (None).
* ``Step.sample_weights`` (tf.nn.weighted_moments): w_i >= 0 per sample, broadcast over every
  non-channel axis: mu = sum(w x) / sum(w), v = sum(w (x - mu)^2) / sum(w) (biased; the Bessel
  variance is undefined for weights), used both to normalize and to update.
* ``Step.replica_sizes`` (cross-replica / synchronized BN): the batch (axis 0) is split into R
  consecutive replicas of the given sizes (unequal and 0 allowed; they sum to B). Statistics are
  the exact moments of the union, i.e. of the whole batch, so y, the batch moments and the
  running update (Bessel factor from the GLOBAL N) equal the unreplicated ones; what is tested is
  that a framework combining per-replica moments gets there. Every replica empty is the empty
  batch (y empty, state unchanged).

Gradients (a step with an upstream gradient ``dy``, same shape as x): the derivatives of
``sum(dy * y)`` with respect to x, gamma and beta, through exactly the function that produced y.
With f(v) = inverse_std(v) per epsilon mode, xc = x - mu, per channel over its N elements
(w_i = 1 unless the step has sample weights; W = sum w)::

    dbeta  = sum(dy)                                      (absent when center is off)
    dgamma = sum(dy * xc * f(v))                          (absent when scale is off)
    batch:   dx_i = g f(v) (dy_i - (w_i / W) sum(dy))
                    + g f'(v) (2 w_i xc_i / W) sum(dy * xc)
    running: dx_i = g f(v_R) dy_i                         (mu, v are constants)

with g = gamma (1 when scale is off), f'(v) = -f^3 / 2 (add_inside_sqrt), -f^2 / (2 sqrt v)
(add_outside_sqrt; its limit 0 is taken when xc == 0, v == 0) and -f^3 / 2 or 0
(max_inside_sqrt, v > eps or v < eps). At N == 1 or for a constant channel xc == 0, so
dx = g f (dy - mean dy) = 0 at N == 1. Ghost batches: each ghost batch by the batch formula,
dgamma / dbeta summed over all. Renorm: r, d are constants (stop-gradient, as the paper says):
g becomes g * r and dgamma = sum(dy * (xc f r + d)).

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
EXTENSIONS = ("renorm", "virtual_batch_size", "sample_weights", "replicas")
GHOST_SPLITS = ("contiguous", "interleaved")
RENORM_STATE_KEYS = ("renorm_mean", "renorm_stddev", "running_stddev")  # state and outputs
GRADIENT_KEYS = ("dx", "dgamma", "dbeta")  # outputs of a step that carries an upstream gradient dy


@dataclass(frozen=True)
class RunningStats:
    """How the running statistics are updated (see the module docstring for formulas)."""

    rule: str = "ema"
    decay: float | None = 0.9
    variance: str = "bessel"
    zero_debias: bool = False
    num_updates_schedule: bool = False
    decay_dtype: str | None = None  # the precision the framework stores decay in (None: exact)
    stated: bool = True  # False: an inference-only case that states no running-update knobs (defaults here)

    @property
    def stored_decay(self) -> float | None:
        """decay as the framework holds it: rounded to ``decay_dtype`` when that is set."""
        if self.decay is None or self.decay_dtype is None:
            return self.decay
        from .dtypes import quantize

        return float(quantize(np.asarray([self.decay]), self.decay_dtype)[0])


@dataclass(frozen=True)
class Renorm:
    """Batch Renormalization knobs: clipping bounds (None = unclipped) and the renorm decay.

    ``decay`` is the weight on the OLD renorm statistic (tf_keras renorm_momentum 0.99 == 0.99).
    """

    rmin: float | None = None
    rmax: float | None = None
    dmax: float | None = None
    decay: float = 0.99


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
    renorm: Renorm | None = None
    virtual_batch_size: int | None = None
    ghost_split: str = "contiguous"
    epsilon_dtype: str | None = None  # the precision the framework stores epsilon in (None: exact)

    @property
    def effective_epsilon(self) -> float:
        """max(epsilon, epsilon_floor), rounded to ``epsilon_dtype`` when that is set."""
        eps = max(self.epsilon, self.epsilon_floor)
        if self.epsilon_dtype is None:
            return eps
        from .dtypes import quantize

        return float(quantize(np.asarray([eps]), self.epsilon_dtype)[0])

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
    # Batch Renormalization only (None otherwise): the statistics r and d are computed from,
    # and the running standard deviation that running_var is derived from (model docstring).
    renorm_mean: np.ndarray | None = None
    renorm_stddev: np.ndarray | None = None
    running_stddev: np.ndarray | None = None

    def copy(self) -> "State":
        extra = {k: None if getattr(self, k) is None else getattr(self, k).copy() for k in RENORM_STATE_KEYS}
        return State(self.gamma.copy(), self.beta.copy(), self.running_mean.copy(),
                     self.running_var.copy(), self.num_updates, **extra)


@dataclass
class Step:
    """One call of the layer: an input, which statistics normalize it, whether stats update.

    ``expected`` maps output names (see OUTPUT_KEYS, plus ``num_updates``) to float64 arrays
    (None where undefined, e.g. batch moments of an empty batch or of an eval step);
    ``tolerance`` maps the same names to ``{"rtol": r, "atol": a}``. Renorm cases add the
    RENORM_STATE_KEYS after the step to both. ``sample_weights`` (one weight per sample along
    axis 0, in the input dtype) makes the batch moments weighted; None means unweighted.
    """

    normalize_with: str
    update_running_stats: bool
    x: np.ndarray
    expected: dict = field(default_factory=dict)
    tolerance: dict = field(default_factory=dict)
    sample_weights: np.ndarray | None = None
    dy: np.ndarray | None = None
    replica_sizes: tuple[int, ...] | None = None  # samples per replica (cross-replica BN), summing to B

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

    @property
    def extensions(self) -> tuple[str, ...]:
        """The EXTENSIONS this case uses (an adapter must opt in to each; see adapters.base)."""
        used = {"renorm": self.config.renorm is not None,
                "virtual_batch_size": self.config.virtual_batch_size is not None,
                "sample_weights": any(s.sample_weights is not None for s in self.steps),
                "replicas": any(s.replica_sizes is not None for s in self.steps)}
        return tuple(name for name in EXTENSIONS if used[name])

    @property
    def gradient_modes(self) -> frozenset:
        """normalize_with of every step that carries an upstream gradient (empty: forward only)."""
        return frozenset(s.normalize_with for s in self.steps if s.dy is not None)

    def reduce_counts(self) -> list[int]:
        """N (elements per channel) of each step."""
        return [count_per_channel(s.x.shape, self.config.channel_axis) for s in self.steps]


def count_per_channel(shape, axis) -> int:
    """N: the product of every dimension but the channel axis."""
    return int(np.prod([d for i, d in enumerate(shape) if i != axis], dtype=np.int64))


def variant(case: Case, running_stats: dict | None = None, **config_changes) -> Case:
    """A copy of ``case`` with some config knobs changed (what a ``MatchesVariant`` declaration runs).

    Example: ``variant(c, running_stats={"variance": "bessel"}, epsilon=1e-3)``.
    """
    config = replace(case.config, **config_changes)
    if running_stats:
        config = config.with_running(**running_stats)
    return replace(case, config=config)
