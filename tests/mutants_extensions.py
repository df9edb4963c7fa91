"""The catalogue's mutants of the model's extensions: renorm, ghost batches, sample weights, replicas
(the core knobs are in tests/mutants.py, which imports this module to register them)."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np

from bnconform.reference import oracle
from bnconform.adapters.base import variant
from bnconform.caseformat.model import count_per_channel
from mutants import _steps, mutant

# -- renorm ----------------------------------------------------------------------------------


def _renorm(case, **knobs):
    return variant(case, renorm=replace(case.config.renorm, **knobs)) if case.config.renorm else case


def _correction(change):
    """renorm_correction with ``change(r, d, running, config) -> (r, d)`` applied after it."""
    original = oracle.renorm_correction
    return lambda mean, var, running, config: change(*original(mean, var, running, config), running, config)


def _unguarded(mean, var, running, config):
    """r and d divided by s_R itself, without tf_keras' max(s_R, sqrt(eps))."""
    with np.errstate(all="ignore"):
        r = np.sqrt(var + config.effective_epsilon) / running.renorm_stddev
        return _clip(r, (mean - running.renorm_mean) / running.renorm_stddev, config)


def _clip(r, d, config):
    knobs = config.renorm
    r = r if knobs.rmin is None else np.maximum(r, knobs.rmin)
    r = r if knobs.rmax is None else np.minimum(r, knobs.rmax)
    return r, d if knobs.dmax is None else np.clip(d, -knobs.dmax, knobs.dmax)


class _VarianceEma(oracle._RunningState):
    """Renorm's running variance as an EMA of the variance (not S^2 - eps of an EMA of S)."""

    def _renorm_update(self, mean, biased_var, var):
        before = self.var
        super()._renorm_update(mean, biased_var, var)
        keep = self.rules.stored_decay
        self.var = keep * before + (1.0 - keep) * var


def _post_update_corrections(original):
    """r and d from the renorm statistics after the step's own update (the update runs first)."""
    def run_step(config, initial, running, step):
        if config.renorm is None or not (step.is_training and step.update_running_stats) or step.x.size == 0:
            return original(config, initial, running, step)
        ahead = copy.deepcopy(running)
        moments = oracle._Moments(config, np.asarray(step.x, np.float64), step)
        ahead.update(moments.mean, moments.var, moments.count)
        y, _ = oracle._normalize_batch(np.asarray(step.x, np.float64), moments, initial, ahead, config)
        result, trace = original(config, initial, running, step)
        return {**result, "y": y}, trace
    return run_step


mutant("renorm_ignored", "Batch Renormalization ignored: plain batch norm", ["renorm"],
       wrong_case=lambda c: variant(c, renorm=None))
mutant("renorm_clipping_ignored", "renorm's rmin, rmax and dmax ignored (r and d unclipped)", ["renorm"],
       wrong_case=lambda c: _renorm(c, rmin=None, rmax=None, dmax=None))
mutant("renorm_drops_d", "renorm's shift d dropped (only r applied)", ["renorm"],
       patches=lambda c: {"renorm_correction": _correction(lambda r, d, running, config: (r, 0 * d))})
mutant("renorm_unguarded", "r and d divided by s_R without the max(s_R, sqrt(eps)) guard", ["renorm"],
       patches=lambda c: {"renorm_correction": _unguarded})
mutant("renorm_decay_from_momentum", "renorm statistics updated with the main decay, not renorm decay",
       ["renorm"], wrong_case=lambda c: _renorm(c, decay=c.config.running_stats.decay))
mutant("renorm_variance_ema", "renorm: running variance an EMA of v, not S^2 - eps of the stddev EMA S",
       ["renorm"], patches=lambda c: {"_RunningState": _VarianceEma})
mutant("renorm_post_update_corrections", "renorm: r and d from the statistics after the step's update",
       ["renorm"], patches=lambda c: {"_run_step": _post_update_corrections(oracle._run_step)})

# -- ghost batches ---------------------------------------------------------------------------


class _GhostWholeBessel(oracle._Moments):
    """Ghost batches: Bessel factor from the whole batch's N instead of one ghost batch's."""

    def __init__(self, config, x, step):
        super().__init__(config, x, step)
        self.count = count_per_channel(x.shape, config.channel_axis) if self.ghost else self.count


class _GhostWholeUpdate(oracle._Moments):
    """Ghost batches: the running update folds in the whole batch's moments."""

    def __init__(self, config, x, step):
        super().__init__(config, x, step)
        if self.ghost:
            self.mean, self.var = oracle.batch_moments(x, config.channel_axis)
            self.count = count_per_channel(x.shape, config.channel_axis)


def _other_split(case):
    split = "interleaved" if case.config.ghost_split == "contiguous" else "contiguous"
    return variant(case, ghost_split=split)


mutant("ghost_split_swapped", "ghost batches split interleaved for contiguous and vice versa", ["ghost"],
       wrong_case=_other_split)
mutant("ghost_ignored", "virtual_batch_size ignored: whole-batch statistics", ["ghost"],
       wrong_case=lambda c: variant(c, virtual_batch_size=None))
mutant("ghost_bessel_whole_batch", "ghost batches: Bessel factor from the whole batch's N", ["ghost"],
       patches=lambda c: {"_Moments": _GhostWholeBessel})
mutant("ghost_update_whole_batch", "ghost batches: the running update uses the whole batch's moments", ["ghost"],
       patches=lambda c: {"_Moments": _GhostWholeUpdate})


def _whole_batch_backward(original):
    """_gradients whose backward ignores the ghost batches: the forward is right, dx and dgamma
    are those of whole-batch statistics (a fused kernel's backward fed the whole batch)."""
    def gradients(config, initial, running, step, x, moments):
        if not moments.ghost:
            return original(config, initial, running, step, x, moments)
        whole = copy.copy(moments)
        whole.ghost = False
        whole.mean, whole.var = oracle.batch_moments(x, config.channel_axis)
        return original(config, initial, running, step, x, whole)
    return gradients


mutant("ghost_backward_whole_batch", "ghost batches: the backward pass uses the whole batch's statistics",
       ["gradients", "ghost"], in_y=False, patches=lambda c: {"_gradients": _whole_batch_backward(oracle._gradients)})

# -- sample weights --------------------------------------------------------------------------


def _weighted(divide_by):
    """weighted_moments whose denominator is ``divide_by(w, x, channel_axis)`` instead of sum(w)."""
    def moments(x, weights, channel_axis):
        x = np.asarray(x, np.float64)
        axes = oracle.reduction_axes(x.ndim, channel_axis)
        w = np.broadcast_to(np.asarray(weights, np.float64).reshape([-1] + [1] * (x.ndim - 1)), x.shape)
        with np.errstate(all="ignore"):
            total = divide_by(np.asarray(weights, np.float64), x, channel_axis)
            mean = (w * x).sum(axis=axes) / total
            centered = x - oracle.broadcast(mean, x.ndim, channel_axis)
            return mean, (w * centered * centered).sum(axis=axes) / total
    return moments


mutant("weights_ignored", "sample weights ignored: plain moments", ["weighted"],
       wrong_case=lambda c: _steps(c, lambda s: {"sample_weights": None}))
mutant("weights_divided_by_count", "weighted sums divided by the element count, not sum(w)", ["weighted"],
       patches=lambda c: {"weighted_moments": _weighted(lambda w, x, axis: count_per_channel(x.shape, axis))})
mutant("weights_not_broadcast", "weighted sums divided by sum(w) over samples, not over every reduced element",
       ["weighted"], patches=lambda c: {"weighted_moments": _weighted(lambda w, x, axis: w.sum())})

# -- cross-replica ---------------------------------------------------------------------------


def _replica_parts(step):
    ends = np.cumsum(step.replica_sizes)
    return [slice(int(e - n), int(e)) for e, n in zip(ends, step.replica_sizes) if n > 0]


def _local_y(case, results):
    """Each replica normalizes with its own moments (no synchronization)."""
    for step, result in zip(case.steps, results):
        if step.replica_sizes is not None and step.is_training:
            x, y = step.x.astype(np.float64), np.array(result["y"], dtype=np.float64)
            for part in _replica_parts(step):
                mean, var = oracle.batch_moments(x[part], case.config.channel_axis)
                y[part] = oracle.normalize(x[part], mean, var, case.initial_state, case.config)
            result["y"] = y
    return results


class _MeanOfReplicaMoments(oracle._Moments):
    """Synchronized moments as the plain mean of the replicas' means and variances."""

    def __init__(self, config, x, step):
        super().__init__(config, x, step)
        if step.replica_sizes is not None and x.shape[0] > 0:
            parts = [oracle.batch_moments(x[p], config.channel_axis) for p in _replica_parts(step)]
            self.mean, self.var = np.mean([m for m, _ in parts], axis=0), np.mean([v for _, v in parts], axis=0)


class _LocalBessel(oracle._Moments):
    """Bessel factor from the first replica's N instead of the global N."""

    def __init__(self, config, x, step):
        super().__init__(config, x, step)
        if step.replica_sizes is not None and x.shape[0] > 0:
            self.count = count_per_channel(x[_replica_parts(step)[0]].shape, config.channel_axis)


mutant("replicas_unsynchronized", "each replica normalizes with its own moments", ["replicas"],
       wrong_results=_local_y)
mutant("replicas_mean_of_moments", "synchronized moments = mean of the replicas' means and variances",
       ["replicas"], patches=lambda c: {"_Moments": _MeanOfReplicaMoments})
mutant("replicas_local_bessel", "running variance's Bessel factor from one replica's N, not the global N",
       ["replicas"], patches=lambda c: {"_Moments": _LocalBessel})
