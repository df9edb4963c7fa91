"""An error bound per element, derived from the case: how far a right implementation's result may
be from the float64 oracle, element by element, from that element's own conditioning.

The stored ``{rtol, atol}`` of an output (bnconform.reference.tolerance) takes its ``atol`` from
the worst-conditioned element of the whole array, so one ill-conditioned channel or ghost batch
loosened every element of the output. Here each element is judged by the terms of its own
*group* (its channel; for ghost-batch steps, its ghost batch and channel), with
``r = rtol(output dtype)`` and ``u = 8 eps(compute dtype)`` as in the stored policy::

    y[i]        r |e_i| + r (|gamma_c| gain xhat_i + |beta_c|) + u |gamma_c| gain |mu_g| f_g
                (xhat_i = |x_i - mu_g| f_g: the terms of y_i; renorm: at least r S_g, S_g = max |y| of the group)
                the last term capped at |gamma_c| gain for a constant group (var_g = 0): a two-pass
                implementation's |x - mu_hat| / sqrt(var_hat + eps) < 1 when every x is equal
    batch_mean  r |e_c| + r mean|x|_c                 (a sum's rounding scales with sum |x|)
    batch_var   r |e_c| + r v_c + (u |mu_c|)^2        (two-pass: var_hat = var + (mu_hat - mu)^2 exactly)
                + 2 u' |mu_c| sqrt(v_c) on a replicated step (u' = eps(compute): replicas' rounded
                means enter a combined variance linearly)
    running_*   keep b_prev + take B + 4 eps(param) (keep |old_c| + take |batch_c| + |e_c|): the
                previous value's bound and the batch statistic's bound B (r of the compute dtype)
                with their weights in the update (d and 1 - d for a plain EMA, else 1 and 1),
                and the update's own roundings; running_var also take (u |mu_c|)^2 N/(N-1);
                renorm's statistics r |e_c| + r (|old_c| + |batch_c|)
    dx[i]       r |e_i| + r max(S_g, |gamma_c| f_g D_g (2 + xhat_g^2)) + u |gamma_c| f_g D_g (1 + 2 xhat_g) |mu_g| f_g
                (training; inference: r |e_i| + r max(S_g, |gamma_c| f_g D_g))
    dgamma      r |e_c| + r sum_g sum|dy xhat| + u sum_g sum|dy| |mu_g| f_g
    dbeta       r |e_c| + r sum|dy|

with f_g = 1 / sigma_g, xhat_g = max |x - mu_g| f_g and D_g = max |dy| over the group, plus one
ulp of e_i in the returned dtype (the last rounding; it matters among subnormals). Every
element's bound is then capped by the stored pair, ``atol + rtol |e_i|``: a derived bound never
widens what the case file says (the generator raises the stored atol to the derived envelope,
:func:`widen_stored_to_envelope`, so for generated cases the cap does not bind). Outputs not listed keep the stored pair. A case file needs
nothing new: the bounds are derived when it is judged (docs/case-format.md, "Error bounds").

:func:`reduction_bias` and :func:`reduction_spread` are the statistical checks for reductions
(TOSA's dot-product mode does the like): the mean of the signed errors over the elements of an
output, each divided by its bound, must stay within ``BIAS_LIMIT``, so that a systematic bias
inside every element's bound fails, and their root mean square within ``SPREAD_LIMIT``.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
from dataclasses import dataclass

import numpy as np

from ..caseformat.dtypes import HALF_DTYPES, compute_dtype, machine_epsilon, numpy_dtype
from ..caseformat.model import Case
from .moments import batch_moments, broadcast, ghost_indices, inverse_std, reduction_axes

DERIVED_KEYS = ("y", "batch_mean", "batch_var", "running_mean", "running_var", "dx", "dgamma", "dbeta")
REDUCTION_KEYS = ("batch_mean", "batch_var", "running_mean", "running_var", "dgamma", "dbeta")
_INPUT_DTYPE_KEYS = ("y", "batch_mean", "batch_var", "dx")
# A right implementation's errors are far inside the bounds (K = 256 or 4 roundings of room each)
# and of either sign; a mean normalized error past this is a systematic bias (docs/case-format.md).
BIAS_LIMIT = 0.5
# ... and most elements use little of their bound: an output of at least SPREAD_MIN_ELEMENTS
# whose normalized errors have a root mean square past SPREAD_LIMIT is not a few roundings (the
# float32 two-pass reference uses at most 0.24 of any bound; no framework on the matrix exceeds
# this limit).
SPREAD_LIMIT, SPREAD_MIN_ELEMENTS = 0.5, 2


@dataclass
class _Groups:
    """How one step's batch was normalized: sample indices of each group (one group: the whole
    batch) and its statistics per (group, channel)."""

    samples: list
    means: np.ndarray  # (G, C)
    vars: np.ndarray  # (G, C)
    gain: float
    counts: np.ndarray  # (G,) values per channel in each group


def _rtol(dtype: str) -> float:
    return (4.0 if dtype in HALF_DTYPES else 256.0) * machine_epsilon(dtype)


def _groups(case: Case, index: int, trace) -> _Groups | None:
    """The groups of step ``index`` from the oracle's trace (None: an empty batch)."""
    if trace is None:
        return None
    config, step = case.config, case.steps[index]
    x = np.asarray(step.x, np.float64)
    axis, channels = config.channel_axis, x.shape[config.channel_axis]
    means, variances, gain = np.asarray(trace[0], np.float64), np.asarray(trace[1], np.float64), float(trace[2])
    if means.size != channels:  # ghost batches: the trace lists (ghost batch, channel), flattened
        samples = ghost_indices(x.shape[0], config.virtual_batch_size, config.ghost_split)
    else:
        samples = [np.arange(x.shape[0])]
    per_channel = int(np.prod([n for a, n in enumerate(x.shape) if a not in (0, axis)] or [1]))
    counts = np.array([len(s) * per_channel for s in samples])
    return _Groups(samples, means.reshape(len(samples), channels), variances.reshape(len(samples), channels),
                   gain if np.isfinite(gain) else 1.0, counts)


def _group_reduce(values: np.ndarray, groups: _Groups, axis: int, how) -> np.ndarray:
    """(G, C): ``how`` (np.max or np.sum) of ``values`` over each group's elements per channel."""
    axes = reduction_axes(values.ndim, axis)
    with np.errstate(invalid="ignore"):
        return np.stack([how(values[s], axis=axes) if values[s].size else np.zeros(values.shape[axis])
                         for s in groups.samples])


def _spread(per_group: np.ndarray, groups: _Groups, shape, axis: int) -> np.ndarray:
    """An array of ``shape`` holding each group's (G, C) value on its elements."""
    out = np.zeros(shape)
    for g, s in enumerate(groups.samples):
        out[s] = broadcast(per_group[g], len(shape), axis)
    return out


def _finite_abs(values) -> np.ndarray:
    values = np.abs(np.asarray(values, np.float64))
    return np.where(np.isfinite(values), values, 0.0)


class _StepBounds:
    """The derived bounds of one step, output by output (``bound(key, expected)``)."""

    def __init__(self, case: Case, index: int, groups: _Groups | None, before: tuple, carried: dict):
        self.case, self.config, self.step, self.groups = case, case.config, case.steps[index], groups
        self.x = np.asarray(self.step.x, np.float64)
        self.axis = self.config.channel_axis
        self.u = 8 * machine_epsilon(compute_dtype(self.config.input_dtype))
        self.before = before  # running (mean, var) before the step
        self.carried = carried  # running key -> the bound of the previous step's value (0 before step 0)
        scale = self.config.scale and case.initial_state.gamma is not None
        self.gamma = _finite_abs(case.initial_state.gamma) if scale else np.ones(self.x.shape[self.axis])

    def rtol(self, key: str) -> float:
        return _rtol(self.config.input_dtype if key in _INPUT_DTYPE_KEYS else self.config.param_dtype)

    def bound(self, key: str, expected, rounding_only: bool = False) -> np.ndarray | None:
        """The per-element bound of ``key`` (broadcast to ``expected``'s shape), or None where this
        model does not cover the output (the stored pair applies). ``rounding_only``: the part
        that is rounding in the returned dtype at the size of the element's own terms (the r
        terms), without what ill conditioning adds (a rounded mean amplified by |mu| / sigma, a
        replica combination): what a right implementation may differ by on any data."""
        method = getattr(self, f"_{key}", None)
        if method is None or self.x.size == 0:
            return None
        e = _finite_abs(expected)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            parts = method(e)
            if parts is None:
                return None
            extra = parts[0] if rounding_only else parts[0] + parts[1]
        return self._own_rounding(key) * e + self._spacing(key, e) + np.where(np.isfinite(extra), extra, np.inf)

    def _own_rounding(self, key: str) -> float:
        """The share of |e| a result's own last operations may round by: r, except for a plain
        running-statistics update (a few roundings of the param dtype: :meth:`_running`)."""
        return 4 * machine_epsilon(self.config.param_dtype) if self._plain_update(key) else self.rtol(key)

    def _plain_update(self, key: str) -> bool:
        """A running statistic of a step modelled by :meth:`_running` (not renorm's)."""
        return key in ("running_mean", "running_var") and self.config.renorm is None

    def _spacing(self, key: str, e: np.ndarray) -> np.ndarray:
        """One ulp of each expected value in the returned dtype: the last rounding no result can
        avoid, which r |e| undercounts only among subnormals (a float16 y of 1.7e-6 has an ulp of
        6e-8, r |e| is 7e-9)."""
        dtype = numpy_dtype(self.config.input_dtype if key in _INPUT_DTYPE_KEYS else self.config.param_dtype)
        with np.errstate(over="ignore", invalid="ignore"):
            spacing = np.spacing(e.astype(dtype)).astype(np.float64)
        return np.where(np.isfinite(spacing), spacing, 0.0)  # beyond the dtype's range: its infinity is judged

    # -- forward -------------------------------------------------------------------------------
    def _f(self) -> np.ndarray:
        return inverse_std(self.groups.vars, self.config)

    def _mean_rounding(self) -> np.ndarray:
        """(G, C): u |gamma| gain |mu| f, capped at |gamma| gain for a constant group."""
        g = self.groups
        term = self.u * self.gamma * g.gain * np.abs(g.means) * self._f()
        return np.where(g.vars == 0, np.minimum(term, self.gamma * g.gain), term)

    @functools.cached_property
    def _xhat(self) -> np.ndarray:
        """|x - mu_g| f_g per element (computed once per step, for y and the gradients)."""
        g = self.groups
        return np.abs(self.x - _spread(g.means, g, self.x.shape, self.axis)) * _spread(self._f(), g, self.x.shape, self.axis)

    @functools.cached_property
    def _moments(self) -> tuple[np.ndarray, np.ndarray]:
        """The whole batch's (mean, biased variance) per channel, computed once per step."""
        return batch_moments(self.x, self.axis)

    @functools.cached_property
    def _mean_abs_x(self) -> np.ndarray:
        """mean |x| per channel: the size of the terms a batch sum rounds at."""
        return _finite_abs(self.x).mean(axis=reduction_axes(self.x.ndim, self.axis))

    def _y(self, e):
        """r (|gamma_c| gain xhat_i + |beta_c|): the terms of y_i, which a rounding scales with even
        where they cancel; renorm's d term is bounded by the group's scale instead."""
        if self.groups is None or e.shape != self.x.shape:
            return None
        rank, beta = self.x.ndim, _finite_abs(self.case.initial_state.beta) if self.config.center else 0 * self.gamma
        terms = broadcast(self.gamma * self.groups.gain, rank, self.axis) * self._xhat + broadcast(beta, rank, self.axis)
        if self.groups.gain != 1.0:
            terms = np.maximum(terms, _spread(_group_reduce(e, self.groups, self.axis, np.max), self.groups, e.shape, self.axis))
        return self.rtol("y") * terms, _spread(self._mean_rounding(), self.groups, e.shape, self.axis)

    def _batch_mean(self, e):
        if self.groups is None:
            return None
        return self.rtol("batch_mean") * self._mean_abs_x, 0.0

    def _mean_squared_rounding(self) -> np.ndarray:
        """(u |mu_c|)^2 per channel: what a rounded mean adds to a two-pass variance, since
        sum (x - mu_hat)^2 / N = var + (mu - mu_hat)^2 (sum (x - mu) = 0). A constant channel's
        variance is 0, and a right float32 implementation returns this instead (TensorFlow:
        9.5e-7 for a constant 1.6e4, half an ulp squared)."""
        return (self.u * np.abs(self._moments[0])) ** 2

    def _replica_combination(self) -> np.ndarray:
        """2 (u / 8) |mu_c| sqrt(v_c) on a replicated step (else 0): a variance combined from the
        replicas' moments takes each replica's rounded mean linearly (tolerance._replica_combination)."""
        if not self.step.replica_sizes:
            return 0.0
        mean, var = self._moments
        return 2 * (self.u / 8) * np.abs(mean) * np.sqrt(np.maximum(var, 0.0))

    def _batch_var(self, e):
        if self.groups is None:
            return None
        return self.rtol("batch_var") * e, self._mean_squared_rounding() + self._replica_combination()

    def _weights(self) -> tuple[float, float]:
        """(weight of the old statistic, of the batch statistic) in this step's update: (d, 1 - d)
        for a plain EMA with a constant decay; (1, 1), an upper bound, where zero-debias divides,
        a schedule or the cumulative rule moves the weights, or renorm keeps its own statistics;
        (1, 0) without an update."""
        rs = self.config.running_stats
        if not self.step.update_running_stats:
            return 1.0, 0.0
        if self.config.renorm is not None or rs.zero_debias or rs.rule != "ema" or rs.num_updates_schedule:
            return 1.0, 1.0
        return rs.stored_decay, 1.0 - rs.stored_decay

    def _running(self, key: str, old, batch, batch_bound):
        """keep b_prev + take B + 4 eps(param) (keep |old| + take |batch|): the previous value's own
        bound carried with its weight, the batch statistic's bound (computed in the compute dtype)
        with its weight, and the update's few roundings (renorm: r (|old| + |batch|) as one term)."""
        if not self._plain_update(key):
            return self.rtol(key) * (_finite_abs(old) + _finite_abs(batch))
        keep, take = self._weights()
        update = 4 * machine_epsilon(self.config.param_dtype) * (keep * _finite_abs(old) + take * _finite_abs(batch))
        return keep * self.carried.get(key, 0.0) + take * batch_bound + update

    def _batch_rtol(self) -> float:
        """rtol of a batch statistic as the update receives it, in the compute dtype (a half input's
        moments rounded to half first are a declared dtype deviation, not this bound's room)."""
        return _rtol(compute_dtype(self.config.input_dtype))

    def _running_mean(self, e):
        if not self.step.update_running_stats or self.x.size == 0:
            return self._running("running_mean", self.before[0], 0.0, 0.0), 0.0
        mean = self._moments[0]
        return self._running("running_mean", self.before[0], mean,
                             self._batch_rtol() * (_finite_abs(mean) + self._mean_abs_x)), 0.0

    def _running_var(self, e):
        if not self.step.update_running_stats or self.x.size == 0:
            return self._running("running_var", self.before[1], 0.0, 0.0), 0.0
        n = self.x.size / max(self.x.shape[self.axis], 1)
        bessel = n / (n - 1) if n > 1 else 1.0
        var = self._moments[1]
        rounding = self._mean_squared_rounding() + self._replica_combination()
        take = self._weights()[1]
        own = self._running("running_var", self.before[1], var * bessel, self._batch_rtol() * 2 * _finite_abs(var) * bessel)
        return own, take * rounding * bessel

    # -- backward ------------------------------------------------------------------------------
    @functools.cached_property
    def _backward_terms(self):
        """(G, C) arrays, computed once per step for dx, dgamma and dbeta: f, xhat max,
        D = max|dy|, sum|dy|, sum|dy xhat|."""
        g, dy, centered = self.groups, np.asarray(self.step.dy, np.float64), self._xhat
        f = self._f()
        return (f, _group_reduce(centered, g, self.axis, np.max), _group_reduce(np.abs(dy), g, self.axis, np.max),
                _group_reduce(np.abs(dy), g, self.axis, np.sum), _group_reduce(np.abs(dy) * centered, g, self.axis, np.sum))

    def _dx(self, e):
        if self.groups is None or self.step.dy is None or e.shape != self.x.shape:
            return None
        f, xhat, d_max, _, _ = self._backward_terms
        gain = self.gamma * self.groups.gain
        r = self.rtol("dx")
        if self.step.normalize_with != "batch":
            scale = np.maximum(_group_reduce(e, self.groups, self.axis, np.max), gain * f * d_max)
            return _spread(r * scale, self.groups, e.shape, self.axis), 0.0
        scale = np.maximum(_group_reduce(e, self.groups, self.axis, np.max), gain * f * d_max * (2 + xhat ** 2))
        rounding = self.u * gain * f * d_max * (1 + 2 * xhat) * np.abs(self.groups.means) * f
        return _spread(r * scale, self.groups, e.shape, self.axis), _spread(rounding, self.groups, e.shape, self.axis)

    def _dgamma(self, e):
        if self.groups is None or self.step.dy is None:
            return None
        f, _, _, dy_sum, dy_xhat = self._backward_terms
        rounding = self.u * dy_sum * np.abs(self.groups.means) * f if self.step.normalize_with == "batch" else 0 * f
        return (self.rtol("dgamma") * dy_xhat).sum(axis=0), rounding.sum(axis=0)

    def _dbeta(self, e):
        if self.groups is None or self.step.dy is None:
            return None
        return self.rtol("dbeta") * self._backward_terms[3].sum(axis=0), 0.0


_TRACES: collections.OrderedDict = collections.OrderedDict()  # fingerprint -> the oracle's (results, traces)
_TRACES_KEPT = 1024  # more than the shipped cases: a host judges one adapter's cases, then the next's


def _fingerprint(case: Case) -> bytes:
    """A digest of everything the oracle's trace depends on (config, initial state, every step's
    inputs and kind): load_case hands each caller its own copy, so identity cannot be the key."""
    digest = hashlib.blake2b(repr((case.config, case.extensions)).encode(), digest_size=20)
    for field in dataclasses.fields(case.initial_state):
        values = getattr(case.initial_state, field.name)
        digest.update(b"|" if values is None else np.ascontiguousarray(values, np.float64).tobytes())
    for step in case.steps:
        digest.update(repr((step.normalize_with, step.update_running_stats, step.replica_sizes)).encode())
        for values in (step.x, step.dy, step.sample_weights):
            digest.update(b"|" if values is None else np.ascontiguousarray(values, np.float64).tobytes())
    return digest.digest()


def _traced(case: Case):
    """The oracle's (results, traces) of the case, kept for the last few cases judged (a host
    judges every adapter of its group on one case file after another)."""
    from .oracle import run_steps_traced

    key = _fingerprint(case)
    if key not in _TRACES:
        _TRACES[key] = run_steps_traced(case.config, case.initial_state, case.steps)
        while len(_TRACES) > _TRACES_KEPT:
            _TRACES.popitem(last=False)
    _TRACES.move_to_end(key)
    return _TRACES[key]


def case_bounds(case: Case) -> list[_StepBounds]:
    """One :class:`_StepBounds` per step (the oracle's trace says what normalized each step),
    kept on the case object for its later outputs."""
    cached = getattr(case, "_derived_bounds", None)
    if cached is not None:
        return cached
    results, traces = _traced(case)
    bounds, before, carried = [], (case.initial_state.running_mean, case.initial_state.running_var), {}
    for index, (result, trace) in enumerate(zip(results, traces)):
        step = _StepBounds(case, index, _groups(case, index, trace), before, carried)
        bounds.append(step)
        before = (result["running_mean"], result["running_var"])
        carried = {**carried, **_running_bounds(step, case.steps[index].expected)}
    case._derived_bounds = bounds
    return bounds


def _running_bounds(step: _StepBounds, expected: dict) -> dict:
    """The step's derived bound of each running statistic it defines (carried into the next)."""
    found = {}
    for key in ("running_mean", "running_var"):
        value = expected.get(key)
        bound = None if value is None else step.bound(key, value)
        if bound is not None:
            found[key] = np.where(np.isfinite(bound), bound, 0.0)
    return found


def widen_stored_to_envelope(case: Case) -> None:
    """Raise each stored ``atol`` of a derived output to the envelope of its derived bounds,
    max_i (bound_i - rtol |e_i|), where that is larger, so that the cap the stored pair puts on
    the derived bounds (:func:`element_bound`) never binds: the pair stays one conservative
    number a reader can use, the per-element bounds judge. Called by the generator and by
    ``bnconform new`` once a case's expected values and stored pairs are set."""
    for index, step in enumerate(case.steps):
        for key in DERIVED_KEYS:
            stored, expected = step.tolerance.get(key), step.expected.get(key)
            if stored is None or expected is None:
                continue
            e = np.asarray(expected, np.float64)
            derived = case_bounds(case)[index].bound(key, e)
            finite = np.isfinite(e) & np.isfinite(np.broadcast_to(derived, e.shape)) if derived is not None else None
            if derived is None or not finite.any():
                continue
            envelope = float(np.max((np.broadcast_to(derived, e.shape) - stored["rtol"] * np.abs(e))[finite]))
            step.tolerance[key] = {**stored, "atol": max(stored["atol"], envelope)}


def rounding_room(case: Case, index: int, key: str, expected) -> np.ndarray | None:
    """The part of the derived bound that is rounding at the size of the element's own terms (no
    conditioning terms): a defect smaller than this, a right implementation could also produce.
    None where nothing is derived."""
    if key not in DERIVED_KEYS:
        return None
    room = case_bounds(case)[index].bound(key, np.asarray(expected, np.float64), rounding_only=True)
    return None if room is None else np.broadcast_to(room, np.shape(expected))


def element_bound(case: Case, index: int, key: str, expected, stored: dict | None) -> np.ndarray | None:
    """The bound each element of output ``key`` of step ``index`` is judged by: the derived one
    capped by the stored ``atol + rtol |e|``; the stored pair alone where nothing is derived;
    None when there is neither."""
    e = np.asarray(expected, np.float64)
    stored_bound = None if stored is None else stored["atol"] + stored["rtol"] * np.abs(e)
    derived = case_bounds(case)[index].bound(key, e) if key in DERIVED_KEYS else None
    if derived is None:
        return stored_bound
    derived = np.broadcast_to(derived, e.shape)
    return derived if stored_bound is None else np.minimum(derived, stored_bound)


def reduction_spread(expected, got, bound) -> tuple[float, int]:
    """(root mean square over finite elements of (got - expected) / bound, how many elements):
    a right implementation's errors are a few roundings against a bound of K, so most elements
    use little of theirs."""
    e, g, b = (np.asarray(v, np.float64) for v in (expected, got, np.broadcast_to(bound, np.shape(expected))))
    finite = np.isfinite(e) & np.isfinite(g) & (b > 0) & np.isfinite(b)
    if not finite.any():
        return 0.0, 0
    return float(np.sqrt(np.mean(((g[finite] - e[finite]) / b[finite]) ** 2))), int(finite.sum())


def reduction_bias(expected, got, bound) -> float:
    """Mean over finite elements of (got - expected) / bound: 0 for unbiased errors, near +-1 when
    every element errs the same way by its whole bound (NaN where nothing is finite)."""
    e, g, b = (np.asarray(v, np.float64) for v in (expected, got, np.broadcast_to(bound, np.shape(expected))))
    finite = np.isfinite(e) & np.isfinite(g) & (b > 0) & np.isfinite(b)
    if finite.sum() < 2:
        return 0.0
    return float(np.mean((g[finite] - e[finite]) / b[finite]))
