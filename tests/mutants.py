"""A catalogue of wrong Batch Normalization implementations (mutants), each with one defect.

Every mutant is the float64 oracle with exactly one mistake a real implementation makes: a knob
read wrongly or ignored, a formula slip, a precision shortcut, a state-handling bug. Everything
else is the oracle's own code, so a mutant that passes a case means no case of that family pins
the knob down. tests/test_mutants.py requires each to fail at least ``MARGIN`` shipped cases, and
those whose defect shows in y to fail that many through y alone (:class:`YOnly`, an API like
tf.nn.batch_normalization that returns nothing else).

Mutants are built three ways: ``wrong_case`` runs the oracle on a changed case (a knob read
wrongly), ``patches`` swaps one oracle building block for the call (a formula slip), and
``wrong_results`` edits the oracle's results (a bug in what is returned).
"""

from __future__ import annotations

import copy
from contextlib import ExitStack
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from unittest import mock

import numpy as np

from bnconform.reference import oracle
from bnconform.adapters.base import Adapter, variant
from bnconform.adapters.numpy_oracle import OracleAdapter
from bnconform.caseformat.dtypes import HALF_DTYPES, compute_dtype, numpy_dtype, quantize

MARGIN = 3  # every mutant must be caught by at least this many cases
CASES_ROOT = Path(__file__).resolve().parents[1] / "cases"


@lru_cache(maxsize=None)
def shipped_cases() -> tuple:
    """Every shipped case, loaded once per process (only by the workers that need them)."""
    from bnconform.execution.plan import discover_cases

    return tuple(discover_cases(CASES_ROOT))


class Mutant(Adapter):
    """The oracle with one defect. ``what``: the defect in one line; ``families``: where the
    test looks first (it stops at MARGIN catches); ``in_y``: the defect is visible in y."""

    framework = "numpy"
    capabilities = OracleAdapter.capabilities
    what = ""
    families: tuple = ()
    in_y = True

    def wrong_case(self, case):
        return case

    def patches(self, case) -> dict:
        """{attribute of bnconform.reference.oracle: replacement} active while the oracle runs."""
        return {}

    def wrong_results(self, case, results):
        return results

    def run(self, case, device):
        if getattr(self, "_last", (None,))[0] is case:  # YOnly asks again for the case just judged
            return self._last[1]
        with ExitStack() as stack:
            for attribute, replacement in self.patches(case).items():
                stack.enter_context(mock.patch.object(oracle, attribute, replacement))
            results = oracle.run_case(self.wrong_case(case))
        self._last = (case, self.wrong_results(case, results))
        return self._last[1]


class YOnly(Adapter):
    """A mutant seen through y alone (the gradient cases are unsupported: they require dx)."""

    framework = "numpy"
    capabilities = replace(OracleAdapter.capabilities, gradients=frozenset())

    def __init__(self, mutant: Mutant):
        self.mutant, self.name = mutant, f"{mutant.name}[y]"

    def run(self, case, device):
        return [{"y": r["y"]} for r in self.mutant.run(case, device)]


class StatelessYOnly(Adapter):
    """A mutant behind a tf.nn-style API: no running state (judged step by step from the state the
    case expects, bnconform.judging.stepwise), no update steps, y alone (no gradients)."""

    framework = "numpy"
    keeps_state = False
    capabilities = replace(OracleAdapter.capabilities, gradients=frozenset(),
                           step_kinds=frozenset({("batch", False), ("running", False)}))

    def __init__(self, mutant: Mutant):
        self.mutant, self.name = mutant, f"{mutant.name}[stateless y]"

    def run(self, case, device):
        return [{"y": r["y"]} for r in self.mutant.run(case, device)]


CATALOGUE: list[type[Mutant]] = []
# Defects of keeping running state (updating, counting, debiasing, storing it): an API without
# running state, handed the expected state at every step, cannot have them, so they have no
# stateless variant. Every other mutant with ``in_y`` is a defect of the forward computation.
STATE_DEFECTS = frozenset(f"mutant.{name}" for name in (
    "updates_in_eval", "never_updates", "updates_without_request", "update_before_normalize", "momentum_flipped",
    "decay_default_0.99", "variance_kind_swapped", "bessel_from_batch_size", "bessel_unguarded_at_n1",
    "zero_debias_ignored", "zero_debias_always", "schedule_ignored", "schedule_always", "schedule_resume_ignored",
    "cumulative_as_ema", "resume_count_ignored", "counter_not_advanced", "empty_batch_counts",
    "empty_batch_poisons_state", "running_stats_in_half", "renorm_decay_from_momentum", "renorm_variance_ema",
    "renorm_post_update_corrections", "ghost_bessel_whole_batch", "ghost_update_whole_batch", "replicas_local_bessel"))


def mutant(name: str, what: str, families=(), in_y: bool = True, **methods):
    """Register a Mutant subclass whose methods are the given functions."""
    cls = type(name, (Mutant,), {"name": f"mutant.{name}", "what": what, "families": tuple(families),
                                  "in_y": in_y, **{k: _method(v) for k, v in methods.items()}})
    CATALOGUE.append(cls)
    return cls


def _method(function):
    return lambda self, *args: function(*args)


def _steps(case, change):
    """The case with ``change(step) -> dict of Step fields`` applied to every step."""
    return replace(case, steps=[replace(s, **change(s)) for s in case.steps])


def _state(case, **fields):
    return replace(case, initial_state=replace(case.initial_state, **fields))


# -- epsilon ---------------------------------------------------------------------------------
mutant("eps_outside_sqrt", "epsilon added outside the square root, 1/(sqrt(v) + eps)", ["epsilon"],
       wrong_case=lambda c: variant(c, epsilon_mode="add_outside_sqrt"))
mutant("eps_as_floor", "epsilon used as a floor, 1/sqrt(max(v, eps))", ["epsilon"],
       wrong_case=lambda c: variant(c, epsilon_mode="max_inside_sqrt"))
mutant("eps_mode_ignored", "epsilon always inside the square root, whatever epsilon_mode says", ["epsilon"],
       wrong_case=lambda c: variant(c, epsilon_mode="add_inside_sqrt"))
mutant("eps_default_1e-5", "the given epsilon ignored: torch's default 1e-5 used", ["epsilon"],
       wrong_case=lambda c: variant(c, epsilon=1e-5))
mutant("eps_default_1e-3", "the given epsilon ignored: Keras' default 1e-3 used", ["epsilon"],
       wrong_case=lambda c: variant(c, epsilon=1e-3))
mutant("eps_floor_ignored", "epsilon_floor ignored (eps used as given)", ["epsilon"],
       wrong_case=lambda c: variant(c, epsilon_floor=0.0))
mutant("eps_floor_always", "cuDNN's 1.001e-5 minimum applied to every epsilon", ["epsilon"],
       wrong_case=lambda c: variant(c, epsilon_floor=max(c.config.epsilon_floor, 1.001e-5)))

# -- gamma, beta, the normalizing moments ----------------------------------------------------
def _with_parameter_gradients(case, results):
    """dgamma / dbeta as the true function has them (a layer that drops gamma still has the parameter)."""
    if any(s.dy is not None for s in case.steps):
        for result, true in zip(results, oracle.run_case(case)):
            result.update({k: true[k] for k in ("dgamma", "dbeta") if result.get(k) is None})
    return results


mutant("drops_gamma", "gamma never applied (scale treated as off)", ["formulas"],
       wrong_case=lambda c: variant(c, scale=False), wrong_results=_with_parameter_gradients)
mutant("scale_flag_ignored", "gamma applied although scale is off", ["formulas", "renorm"],
       wrong_case=lambda c: variant(c, scale=True))
mutant("drops_beta", "beta never added (center treated as off)", ["formulas"],
       wrong_case=lambda c: variant(c, center=False), wrong_results=_with_parameter_gradients)
mutant("center_flag_ignored", "beta added although center is off", ["formulas", "renorm"],
       wrong_case=lambda c: variant(c, center=True))
mutant("abs_gamma", "|gamma| used instead of gamma (sign lost)", ["formulas"],
       wrong_case=lambda c: _state(c, gamma=np.abs(c.initial_state.gamma)))


def _bessel_normalize(original):
    def normalize_batch(x, moments, initial, running, config):
        factor = moments.count / max(moments.count - 1, 1)
        wrong = copy.copy(moments)
        wrong.var = moments.var * factor
        if moments.ghost:
            wrong.vars = moments.vars * factor
        return original(x, wrong, initial, running, config)
    return normalize_batch


mutant("unbiased_variance_normalizes", "training normalizes with the Bessel-corrected variance N/(N-1) v",
       ["formulas", "degenerate"], patches=lambda c: {"_normalize_batch": _bessel_normalize(oracle._normalize_batch)})


def _per_position(case, results):
    """y of training steps normalized per position (reduced over the batch axis only)."""
    for step, result in zip(case.steps, results):
        x = step.x.astype(np.float64)
        if step.is_training and x.shape[0] > 0:
            with np.errstate(all="ignore"):
                mean, var = x.mean(axis=0, keepdims=True), x.var(axis=0, keepdims=True)
                result["y"] = (x - mean) / np.sqrt(var + case.config.effective_epsilon)
    return results


mutant("per_position_statistics", "statistics over the batch axis only (per position, a 2-D-only BN)",
       ["formulas"], wrong_results=_per_position)

# -- which statistics normalize, and when they update ---------------------------------------
mutant("batch_stats_in_eval", "inference steps normalize with batch statistics", ["formulas", "epsilon"],
       wrong_case=lambda c: _steps(c, lambda s: {"normalize_with": "batch"}))
mutant("running_stats_in_training", "training steps normalize with the running statistics", ["formulas"],
       wrong_case=lambda c: _steps(c, lambda s: {"normalize_with": "running"}))
mutant("updates_in_eval", "inference steps update the running statistics", ["momentum"],
       wrong_case=lambda c: _steps(c, lambda s: {"update_running_stats": True}))
mutant("never_updates", "the running statistics are never updated", ["momentum"],
       wrong_case=lambda c: _steps(c, lambda s: {"update_running_stats": False}))
mutant("updates_without_request", "batch-normalized steps always update (the update op always runs)", ["momentum"],
       wrong_case=lambda c: _steps(c, lambda s: {"update_running_stats": s.update_running_stats or s.is_training}))


def _update_first(case, results):
    """A step that normalizes with running statistics AND updates them uses the updated ones."""
    for step, result in zip(case.steps, results):
        if step.normalize_with == "running" and step.update_running_stats and step.x.shape[0] > 0:
            post = replace(case.initial_state, running_mean=result["running_mean"], running_var=result["running_var"])
            result["y"] = oracle.normalize(step.x, post.running_mean, post.running_var, case.initial_state, case.config)
    return results


mutant("update_before_normalize", "running statistics updated before they normalize the same step", ["momentum"],
       wrong_results=_update_first)

# -- running-statistics rules ----------------------------------------------------------------
mutant("momentum_flipped", "decay read as the weight on the new batch (torch momentum for Keras momentum)",
       ["momentum"], wrong_case=lambda c: variant(c, running_stats={"decay": 1 - c.config.running_stats.decay})
       if c.config.running_stats.decay is not None else c)
mutant("decay_default_0.99", "the given decay ignored: Keras' default 0.99 used", ["momentum"],
       wrong_case=lambda c: variant(c, running_stats={"decay": 0.99}) if c.config.running_stats.rule == "ema" else c)
mutant("variance_kind_swapped", "biased and Bessel running variance swapped", ["momentum"],
       wrong_case=lambda c: variant(c, running_stats={
           "variance": "biased" if c.config.running_stats.variance == "bessel" else "bessel"}))


class _BatchSizeBessel(oracle._Moments):
    """Bessel factor from the number of samples (axis 0) instead of the elements per channel."""

    def __init__(self, config, x, step):
        super().__init__(config, x, step)
        self.count = config.virtual_batch_size if self.ghost else x.shape[0]


mutant("bessel_from_batch_size", "Bessel factor B/(B-1) from the batch size, not N = B x spatial",
       ["momentum", "formulas"], patches=lambda c: {"_Moments": _BatchSizeBessel})


class _UnguardedBessel(oracle._RunningState):
    """N/(N-1) at N = 1 is 1/0: the zero variance times Inf stores NaN."""

    def update(self, mean, var, n):
        if self.rules.variance == "bessel" and n == 1:
            with np.errstate(invalid="ignore"):
                var = var * np.inf  # 0 * Inf = NaN
        super().update(mean, var, n)


mutant("bessel_unguarded_at_n1", "Bessel factor N/(N-1) not guarded at N = 1 (running variance NaN)",
       ["degenerate"], patches=lambda c: {"_RunningState": _UnguardedBessel})
mutant("zero_debias_ignored", "zero_debias ignored: a plain EMA from the initial state", ["momentum"],
       wrong_case=lambda c: variant(c, running_stats={"zero_debias": False}))
mutant("zero_debias_always", "the EMA always zero-debiased", ["momentum"],
       wrong_case=lambda c: variant(c, running_stats={"zero_debias": True}))
mutant("schedule_ignored", "the num_updates decay schedule ignored (decay constant)", ["momentum"],
       wrong_case=lambda c: variant(c, running_stats={"num_updates_schedule": False}))
mutant("schedule_always", "the num_updates decay schedule always applied", ["momentum"],
       wrong_case=lambda c: variant(c, running_stats={"num_updates_schedule": True})
       if c.config.running_stats.rule == "ema" else c)


class _ScheduleFromZero(oracle._RunningState):
    """The schedule's n counts this run's updates only (a resumed counter is ignored)."""

    def _decay(self):
        rs, n = self.rules, self.count - self.start
        return min(rs.stored_decay, (1.0 + n) / (10.0 + n)) if rs.num_updates_schedule else rs.stored_decay

    def __init__(self, state, config):
        super().__init__(state, config)
        self.start = state.num_updates


mutant("schedule_resume_ignored", "the decay schedule restarts at n = 0 when resuming from num_updates > 0",
       ["momentum"], patches=lambda c: {"_RunningState": _ScheduleFromZero})
mutant("cumulative_as_ema", "the cumulative average replaced by an EMA with decay 0.9", ["momentum", "degenerate"],
       wrong_case=lambda c: variant(c, running_stats={"rule": "ema", "decay": 0.9})
       if c.config.running_stats.rule == "cumulative" else c)
mutant("resume_count_ignored", "the initial num_updates ignored (the counter restarts at 0)", ["momentum"],
       wrong_case=lambda c: _state(c, num_updates=0))


class _FrozenCounter(oracle._RunningState):
    def update(self, mean, var, n):
        super().update(mean, var, n)
        self.count -= 1


mutant("counter_not_advanced", "num_updates never advances (cumulative weights stay 1/(n0 + 1))",
       ["momentum", "degenerate"], patches=lambda c: {"_RunningState": _FrozenCounter})


def _empty_step_hook(original, effect):
    def run_step(config, initial, running, step):
        result, trace = original(config, initial, running, step)
        if step.update_running_stats and step.x.size == 0:
            effect(running, config)
            result.update(running_mean=running.mean.copy(), running_var=running.var.copy(), num_updates=running.count)
        return result, trace
    return run_step


def _count_empty(running, config):
    running.count += 1
    if config.running_stats.zero_debias:
        running.decay_product *= running._decay()


def _poison_empty(running, config):
    running.mean = running.mean * np.nan
    running.var = running.var * np.nan


mutant("empty_batch_counts", "an empty batch counts as an update (cumulative weight, debias power)",
       ["degenerate"], patches=lambda c: {"_run_step": _empty_step_hook(oracle._run_step, _count_empty)})
mutant("empty_batch_poisons_state", "an empty batch writes its 0/0 moments (NaN) into the running statistics",
       ["degenerate"], patches=lambda c: {"_run_step": _empty_step_hook(oracle._run_step, _poison_empty)})


def _nan_everywhere(case, results):
    """A NaN or Inf anywhere in x makes every channel's batch statistics (hence y) NaN."""
    for step, result in zip(case.steps, results):
        if step.is_training and not np.isfinite(step.x.astype(np.float64)).all():
            result["y"] = result["y"] * np.nan
            for key in ("batch_mean", "batch_var"):
                result[key] = None if result[key] is None else result[key] * np.nan
    return results


mutant("non_finite_leaks_across_channels", "a NaN/Inf in one channel poisons every channel (fused reduction)",
       ["degenerate"], wrong_results=_nan_everywhere)

# -- precision -------------------------------------------------------------------------------


def _tree_sum(values):
    """Row sums of a (C, N) array by pairwise addition, every partial sum rounded to its dtype
    (the most accurate order in that precision; NumPy's own float16 sums accumulate in float32)."""
    if values.shape[1] == 0:
        return np.zeros(values.shape[0], values.dtype)
    while values.shape[1] > 1:
        if values.shape[1] % 2:
            values = np.concatenate([values, np.zeros_like(values[:, :1])], axis=1)
        values = values[:, 0::2] + values[:, 1::2]
    return values[:, 0]


def _loop_sum(values):
    """Row sums of a (C, N) array by a running accumulator in the array's dtype (a naive loop)."""
    total = np.zeros(values.shape[0], values.dtype)
    for column in values.T:
        total = total + column
    return total


def _moments_in(dtype, one_pass=False, summed=_tree_sum):
    """batch_moments with every sum and product rounded to ``dtype``; two-pass, or one-pass
    E[x^2] - E[x]^2; ``summed``: the order of the sums."""
    def moments(x, channel_axis):
        low = np.moveaxis(np.asarray(x, np.float64), channel_axis, 0).astype(numpy_dtype(dtype))
        low = low.reshape(low.shape[0], -1)
        n = low.dtype.type(low.shape[1])
        with np.errstate(all="ignore"):
            mean = summed(low) / n
            if one_pass:
                var = summed(low * low) / n - mean * mean
            else:
                centered = low - mean[:, None]
                var = summed(centered * centered) / n
        return mean.astype(np.float64), np.asarray(var).astype(np.float64)
    return moments


mutant("half_loop_moments", "half inputs: mean and variance summed in a half-precision loop", ["formulas"],
       patches=lambda c: {"batch_moments": _moments_in(c.config.input_dtype, summed=_loop_sum)}
       if c.config.input_dtype in HALF_DTYPES else {})
mutant("half_pairwise_moments", "half inputs: moments summed pairwise in the half dtype (below y's tolerance)",
       ["formulas"], in_y=False,
       patches=lambda c: {"batch_moments": _moments_in(c.config.input_dtype)} if c.config.input_dtype in HALF_DTYPES
       else {})
mutant("one_pass_variance", "variance as E[x^2] - E[x]^2 in the compute dtype (cancellation)", ["degenerate"],
       patches=lambda c: {"batch_moments": _moments_in(compute_dtype(c.config.input_dtype), one_pass=True)})
mutant("float32_for_float64", "float64 inputs: moments accumulated in float32", ["formulas", "momentum"],
       patches=lambda c: {"batch_moments": _moments_in("float32")} if c.config.input_dtype == "float64" else {})


def _stored_in(dtype):
    class StoredIn(oracle._RunningState):
        """Running statistics rounded to ``dtype`` after every update (kept in that dtype)."""

        def update(self, mean, var, n):
            super().update(mean, var, n)
            self.mean, self.var = (quantize(v, dtype).astype(np.float64) for v in (self.mean, self.var))
    return StoredIn


mutant("running_stats_in_half", "half inputs: running statistics stored in the half dtype", ["formulas"],
       in_y=False, patches=lambda c: {"_RunningState": _stored_in(c.config.input_dtype)}
       if c.config.input_dtype in HALF_DTYPES else {})


import mutants_extensions  # noqa: E402,F401  (registers the renorm, ghost, weights and replicas mutants)
