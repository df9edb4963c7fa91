"""A right float32 Batch Normalization, as an adapter: the yardstick for the per-element bounds.

:class:`Float32TwoPass` computes every output of a case in float32 NumPy arithmetic from the
formulas of bnconform.caseformat.model (and the backward pass of bnconform.reference.gradients),
the way a careful framework kernel does::

    mean = sum(x) / N                 np.sum(..., dtype=float32): pairwise along the inner axis
    var  = sum((x - mean)^2) / N      two passes, biased; Bessel N/max(N-1, 1) only for the update
    y    = gamma * ((x - mean) * f(var)) + beta      f per epsilon mode, all in float32

Half inputs (float16, bfloat16) are widened to float32, computed there, and every output is
rounded to its dtype at the end (input dtype: y, batch moments, dx; parameter dtype: running
statistics, dgamma, dbeta); half running statistics are rounded after every update, as a
framework that stores them in that dtype does. The extensions are implemented as frameworks do
them: ghost batches per group, sample weights as weighted sums, replicas by combining each
replica's own two-pass moments (Chan's formula, in float32 as torch.nn.SyncBatchNorm's CUDA
kernels do) and per-replica partial sums of the gradients, renorm with (r, d) from the pre-update
renorm statistics.

It is not registered: tests/test_float32_reference.py judges it on every shipped case, so that
a bound too tight for right float32 arithmetic shows as a failing cell. Every knob value it
declares in ``capabilities`` is implemented; float64 cases are unsupported (float32 cannot
meet a float64 tolerance), so is nothing else. Its one declared deviation is float32's range:
squares of inputs beyond 1.8e19 overflow (the degenerate family's huge_mixed_sign cases).
"""

from __future__ import annotations

import numpy as np

from bnconform.adapters import Adapter, Capabilities, Deviation, Mismatches, dtype_pairs, squares_overflow
from bnconform.caseformat.dtypes import numpy_dtype
from bnconform.caseformat.model import EXTENSIONS, NORMALIZE_WITH, count_per_channel
from bnconform.reference.moments import ghost_indices

F32 = np.float32
HALF_AND_SINGLE = ("float32", "float16", "bfloat16")


class _Layout:
    """The channel axis of one step's input: float32 channel sums and broadcasting."""

    def __init__(self, rank: int, axis: int, replica_sizes=None):
        self.rank, self.axis = rank, axis
        self.axes = tuple(a for a in range(rank) if a != axis)
        self.replica_sizes = replica_sizes

    def b(self, values) -> np.ndarray:
        """A per-channel vector reshaped to broadcast along the channel axis."""
        shape = [1] * self.rank
        shape[self.axis] = -1
        return np.asarray(values, F32).reshape(shape)

    def sum(self, values) -> np.ndarray:
        """Per-channel float32 sum; for a replicated step, each replica's partial sum, then their sum
        (what an all-reduce of per-replica sums returns)."""
        if self.replica_sizes is None:
            return np.sum(values, axis=self.axes, dtype=F32)
        parts = np.split(values, np.cumsum(self.replica_sizes)[:-1], axis=0)
        return np.sum(np.stack([np.sum(p, axis=self.axes, dtype=F32) for p in parts]), axis=0, dtype=F32)


def two_pass(x: np.ndarray, lay: _Layout, weights=None) -> tuple[np.ndarray, np.ndarray]:
    """Float32 mean and biased variance per channel; ``weights`` (broadcast like x) weigh each
    element: mean = sum(w x) / sum(w), var = sum(w (x - mean)^2) / sum(w)."""
    with np.errstate(all="ignore"):
        total = F32(count_per_channel(x.shape, lay.axis)) if weights is None else lay.sum(weights)
        mean = lay.sum(x if weights is None else weights * x) / total
        centered = x - lay.b(mean)
        squares = centered * centered if weights is None else weights * centered * centered
        return mean, lay.sum(squares) / total


def replica_moments(x: np.ndarray, lay: _Layout, local_moments=two_pass) -> tuple[np.ndarray, np.ndarray]:
    """Each replica's own moments (``local_moments``) combined as torch.nn.SyncBatchNorm does
    (Chan et al.): mean = sum n_r mean_r / N, var = sum n_r (var_r + (mean_r - mean)^2) / N, all in
    float32; empty replicas are left out."""
    local = _Layout(lay.rank, lay.axis)
    parts = [p for p in np.split(x, np.cumsum(lay.replica_sizes)[:-1], axis=0) if p.size]
    counts = [F32(count_per_channel(p.shape, lay.axis)) for p in parts]
    moments = [local_moments(p, local) for p in parts]
    with np.errstate(all="ignore"):
        total = np.sum(np.array(counts, F32), dtype=F32)
        mean = np.sum(np.stack([n * m for n, (m, _) in zip(counts, moments)]), axis=0, dtype=F32) / total
        spread = [n * (v + (m - mean) * (m - mean)) for n, (m, v) in zip(counts, moments)]
        return mean, np.sum(np.stack(spread), axis=0, dtype=F32) / total


class _Epsilon:
    """f(v) = 1 / denominator and its derivative f'(v), in float32, per epsilon mode."""

    def __init__(self, config):
        self.eps, self.mode = F32(config.effective_epsilon), config.epsilon_mode

    def f(self, var):
        with np.errstate(all="ignore"):
            if self.mode == "add_inside_sqrt":
                return F32(1) / np.sqrt(var + self.eps)
            if self.mode == "add_outside_sqrt":
                return F32(1) / (np.sqrt(var) + self.eps)
            return F32(1) / np.sqrt(np.maximum(var, self.eps))

    def derivative(self, var):
        """-f^3/2 inside; -f^2/(2 sqrt v) outside (0 at v = 0); max: -f^3/2 where v > eps, else 0."""
        f, half = self.f(var), F32(0.5)
        with np.errstate(all="ignore"):
            if self.mode == "add_inside_sqrt":
                return -half * f * f * f
            if self.mode == "add_outside_sqrt":
                root = np.sqrt(var)
                return np.where(root > 0, -half * f * f / np.where(root > 0, root, F32(1)), F32(0)).astype(F32)
            return np.where(var > self.eps, -half * f * f * f, F32(0)).astype(F32)


class _Running:
    """Running statistics in float32 (rounded to the parameter dtype after each update), with the
    zero-debias accumulators, the update counter and the renorm state."""

    def __init__(self, case):
        state, self.config = case.initial_state, case.config
        self.rules, self.dtype = case.config.running_stats, numpy_dtype(case.config.param_dtype)
        self.mean, self.var = state.running_mean.astype(F32), state.running_var.astype(F32)
        self.count = state.num_updates
        self.biased_mean, self.biased_var = np.zeros_like(self.mean), np.zeros_like(self.var)
        self.decay_product = F32(1)
        if case.config.renorm is not None:
            self.renorm_mean, self.renorm_stddev, self.stddev = (
                getattr(state, k).astype(F32) for k in ("renorm_mean", "renorm_stddev", "running_stddev"))

    def _store(self, values) -> np.ndarray:
        return np.asarray(values, F32).astype(self.dtype).astype(F32)

    def _decay(self) -> np.float32:
        decay = F32(self.rules.stored_decay)
        if self.rules.num_updates_schedule:
            return min(decay, F32(1 + self.count) / F32(10 + self.count))
        return decay

    def update(self, mean, var, n: int) -> None:
        """Fold in a batch's mean and biased variance over ``n`` elements per channel."""
        biased = var
        if self.rules.variance == "bessel":
            var = var * F32(n / max(n - 1, 1))
        with np.errstate(all="ignore"):
            if self.config.renorm is not None:
                self._renorm_update(mean, biased, var)
            elif self.rules.rule == "cumulative":
                step = F32(self.count + 1)
                self.mean = self._store(self.mean + (mean - self.mean) / step)
                self.var = self._store(self.var + (var - self.var) / step)
            else:
                self._ema(mean, var, self._decay())
        self.count += 1

    def _ema(self, mean, var, d) -> None:
        new = F32(1) - d
        if not self.rules.zero_debias:
            self.mean, self.var = self._store(d * self.mean + new * mean), self._store(d * self.var + new * var)
            return
        self.biased_mean = self._store(d * self.biased_mean + new * mean)
        self.biased_var = self._store(d * self.biased_var + new * var)
        self.decay_product = F32(self.decay_product * d)
        self.mean = self._store(self.biased_mean / (F32(1) - self.decay_product))
        self.var = self._store(self.biased_var / (F32(1) - self.decay_product))

    def _renorm_update(self, mean, biased, var) -> None:
        eps, keep, renorm_keep = F32(self.config.effective_epsilon), F32(self.rules.stored_decay), F32(
            self.config.renorm.decay)
        self.renorm_mean = self._store(renorm_keep * self.renorm_mean + (F32(1) - renorm_keep) * mean)
        self.renorm_stddev = self._store(renorm_keep * self.renorm_stddev
                                         + (F32(1) - renorm_keep) * np.sqrt(biased + eps))
        self.mean = self._store(keep * self.mean + (F32(1) - keep) * mean)
        self.stddev = self._store(keep * self.stddev + (F32(1) - keep) * np.sqrt(var + eps))
        self.var = self._store(np.maximum(self.stddev * self.stddev - eps, F32(0)))

    def renorm_correction(self, mean, var) -> tuple[np.ndarray, np.ndarray]:
        """(r, d) from the pre-update renorm statistics, clipped as the case says."""
        knobs, eps = self.config.renorm, F32(self.config.effective_epsilon)
        with np.errstate(all="ignore"):
            reference = np.maximum(self.renorm_stddev, np.sqrt(eps))
            r, d = np.sqrt(var + eps) / reference, (mean - self.renorm_mean) / reference
        r = r if knobs.rmin is None else np.maximum(r, F32(knobs.rmin))
        r = r if knobs.rmax is None else np.minimum(r, F32(knobs.rmax))
        return r, (d if knobs.dmax is None else np.clip(d, F32(-knobs.dmax), F32(knobs.dmax)))

    def outputs(self) -> dict:
        out = {"running_mean": self.mean.copy(), "running_var": self.var.copy(), "num_updates": self.count}
        if self.config.renorm is not None:
            out.update(renorm_mean=self.renorm_mean.copy(), renorm_stddev=self.renorm_stddev.copy(),
                       running_stddev=self.stddev.copy())
        return out


class _Batch:
    """One step's batch statistics: the groups that normalize separately (one, or the ghost
    batches) with their (mean, var), the statistics the update folds in, and the weights."""

    def __init__(self, case, step, x: np.ndarray, lay: _Layout, moments):
        self.weights, config = None, case.config
        if config.virtual_batch_size is not None:
            self._ghost(config, x, lay, moments)
            return
        if step.sample_weights is not None:
            shape = [-1] + [1] * (x.ndim - 1)
            self.weights = np.broadcast_to(step.sample_weights.astype(F32).reshape(shape), x.shape)
        if lay.replica_sizes is not None:
            self.mean, self.var = replica_moments(x, lay, moments)
        else:
            self.mean, self.var = moments(x, lay, self.weights)
        self.groups, self.stats = [slice(None)], [(self.mean, self.var)]
        self.count = count_per_channel(x.shape, lay.axis)

    def _ghost(self, config, x, lay, moments) -> None:
        """Each ghost batch by its own moments; the update sees their float32 means, M per ghost batch."""
        self.groups = ghost_indices(x.shape[0], config.virtual_batch_size, config.ghost_split)
        parts = [moments(x[g], lay) for g in self.groups]
        means, variances = np.stack([p[0] for p in parts]), np.stack([p[1] for p in parts])
        count = F32(len(self.groups))
        self.stats = list(zip(means, variances))
        self.mean, self.var = np.sum(means, 0, dtype=F32) / count, np.sum(variances, 0, dtype=F32) / count
        self.count = count_per_channel(x[self.groups[0]].shape, lay.axis)


class Float32TwoPass(Adapter):
    """Batch Normalization in float32 NumPy, two-pass moments; every knob and extension of the model."""

    name = "test.float32_two_pass"
    framework = "numpy"
    requires = ("numpy",)
    notes = "tests/float32_reference.py: a right float32 kernel, the yardstick for the error bounds"
    capabilities = Capabilities(dtypes=dtype_pairs(inputs=HALF_AND_SINGLE), extensions=frozenset(EXTENSIONS),
                                gradients=frozenset(NORMALIZE_WITH))
    decay_parameter = ("decay", "old")
    deviations = (
        Deviation(
            name="float32-variance-overflow",
            kind="precision",  # right formula; float32 cannot hold the squares
            applies=squares_overflow("float32"),
            behaviour=Mismatches(("y", "batch_var", "running_var", "dx", "dgamma"),
                                 "the variance overflows to Inf, so y collapses to beta"),
            explanation="accumulates (x - mean)^2 in float32, which overflows above 1.8e19 per term",
            link="https://numpy.org/doc/stable/reference/generated/numpy.var.html",
        ),
    )
    moments = staticmethod(two_pass)  # (x, layout, weights=None) -> (mean, biased var) in float32

    def run(self, case, device):
        running = _Running(case)
        return [self._step(case, running, step) for step in case.steps]

    def _step(self, case, running: _Running, step) -> dict:
        """Every output of one step, computed before the step's own update, then the update."""
        x = step.x.astype(F32)
        lay = _Layout(x.ndim, case.config.channel_axis, step.replica_sizes)
        needed = x.size and (step.is_training or step.update_running_stats)
        batch = _Batch(case, step, x, lay, self.moments) if needed else None
        out = self._forward(case, running, step, x, lay, batch)
        if step.update_running_stats and batch is not None:
            running.update(batch.mean, batch.var, batch.count)
        out.update(running.outputs())
        if step.replica_sizes is not None:
            out["replicas"] = len(step.replica_sizes)
        return self._rounded(case, out)

    def _forward(self, case, running, step, x, lay, batch) -> dict:
        """y = gamma xhat + beta, the batch moments of an unsplit batch-normalized step, and the
        gradients of a step with dy."""
        gamma, beta = _params(case)
        normalized, parts = self._normalized(case, running, step, x, lay, batch)
        with np.errstate(all="ignore"):
            out = {"y": normalized * lay.b(gamma) + lay.b(beta)}
        if parts and case.config.virtual_batch_size is None:
            out.update(batch_mean=batch.mean, batch_var=batch.var)
        if step.dy is not None:
            out.update(self._backward(case, running, step.dy.astype(F32), x, lay, batch, gamma, normalized, parts))
        return out

    @staticmethod
    def _normalized(case, running, step, x, lay, batch):
        """(xhat, parts): xhat = (x - mean) f(var) r + d with the statistics the step normalizes with
        (renorm's r, d; else 1, 0), and per batch group (group, mean, var, r) ([] for running ones)."""
        eps = _Epsilon(case.config)
        with np.errstate(all="ignore"):
            if not step.is_training or not x.size:
                return (x - lay.b(running.mean)) * lay.b(eps.f(running.var)), []
            xhat, parts = np.empty_like(x), []
            for group, (mean, var) in zip(batch.groups, batch.stats):
                r, d = (np.ones_like(mean), np.zeros_like(mean)) if case.config.renorm is None else \
                    running.renorm_correction(mean, var)
                xhat[group] = (x[group] - lay.b(mean)) * lay.b(eps.f(var) * r) + lay.b(d)
                parts.append((group, mean, var, r))
        return xhat, parts

    @staticmethod
    def _backward(case, running, dy, x, lay, batch, gamma, normalized, parts) -> dict:
        """dx, dgamma = sum(dy xhat), dbeta = sum(dy) (bnconform.reference.gradients), in float32;
        dgamma / dbeta None where scale / center is off."""
        eps = _Epsilon(case.config)
        with np.errstate(all="ignore"):
            if not parts:  # running statistics are constants: y is affine in x
                dx = lay.b(gamma * eps.f(running.var)) * dy
            else:
                dx = np.empty_like(x)
                for group, mean, var, r in parts:
                    w = None if batch.weights is None else batch.weights[group]
                    dx[group] = batch_dx(x[group], dy[group], mean, var, gamma * r, eps, lay, w)
            return {"dx": dx, "dgamma": lay.sum(dy * normalized) if case.config.scale else None,
                    "dbeta": lay.sum(dy) if case.config.center else None}

    @staticmethod
    def _rounded(case, out: dict) -> dict:
        """Each output in the dtype a framework returns it in (module docstring)."""
        single = {"y", "batch_mean", "batch_var", "dx"}
        for key, value in out.items():
            if isinstance(value, np.ndarray):
                dtype = case.config.input_dtype if key in single else case.config.param_dtype
                with np.errstate(over="ignore"):  # beyond a half dtype's range: its infinity
                    out[key] = value.astype(numpy_dtype(dtype))
        return out


def _params(case) -> tuple[np.ndarray, np.ndarray]:
    """(gamma, beta) in float32: 1 and 0 where scale / center is off."""
    state, config = case.initial_state, case.config
    gamma = state.gamma.astype(F32) if config.scale else np.ones(case.channels, F32)
    beta = state.beta.astype(F32) if config.center else np.zeros(case.channels, F32)
    return gamma, beta


def batch_dx(x, dy, mean, var, gain, eps: _Epsilon, lay: _Layout, weights=None) -> np.ndarray:
    """dx = g f (dy - (w / W) sum dy) + g f'(v) (2 w xc / W) sum(dy xc), per channel in float32
    (``gain`` = gamma, times renorm's r; ``weights`` None = 1)."""
    w = np.ones_like(x) if weights is None else weights
    total = lay.sum(w)
    centered = x - lay.b(mean)
    direct = lay.b(gain * eps.f(var)) * (dy - w * lay.b(lay.sum(dy) / total))
    through_var = lay.b(gain * eps.derivative(var) * F32(2) / total * lay.sum(dy * centered))
    return direct + through_var * w * centered
