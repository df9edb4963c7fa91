"""momentum: how running statistics evolve over >= 3 distinct batches, then an eval step.

Each batch has its own mean and spread, so a wrong decay convention (weight on the new batch
instead of the old statistic), a missing Bessel correction, or an extra update shows up in the
running statistics and in the final eval output. Steps that normalize with the running
statistics and update them pin the order (normalize first), and sequences resumed from
num_updates > 0 pin the counter the cumulative rule and the decay schedule read.
"""

from __future__ import annotations

from ..caseformat.model import Config, RunningStats
from .spec import EVAL, EVAL_UPDATE, TRAIN, TRAIN_NO_UPDATE, Spec

FAMILY = "momentum"


def _shifting(rng, shape):
    """Each call draws a batch with a new per-call mean and spread."""
    return rng.normal(rng.uniform(-2, 2), rng.uniform(0.5, 3.0), size=shape)


def _config(decay=0.9, variance="bessel", rule="ema", axis=1, **extra) -> Config:
    running = RunningStats(rule=rule, decay=None if rule == "cumulative" else decay, variance=variance,
                           **extra)
    return Config(channel_axis=axis, running_stats=running)


def _ema(decay, variance, steps=(TRAIN, TRAIN, TRAIN, EVAL), shape=(6, 3), name=None, **extra):
    tag = name or f"decay_{decay:g}_{variance}_3steps"
    convention = (f"weight {decay:g} on the old statistic; reading {decay:g} as the weight on the new batch "
                  f"(the torch momentum convention) gives weight {1 - decay:g} instead")
    yield Spec(FAMILY, tag,
               f"EMA of running stats with decay {decay:g} ({convention}); running variance "
               f"{'Bessel-corrected N/(N-1)' if variance == 'bessel' else 'biased (population)'}, so the "
               f"{'biased' if variance == 'bessel' else 'unbiased'} variance is off by (N-1)/N per batch.",
               _config(decay, variance, **extra), [shape], steps, _shifting)


def _decays():
    for decay in (0.0, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0):
        yield from _ema(decay, "bessel")
    for decay in (0.1, 0.9, 0.99):
        yield from _ema(decay, "biased")
    yield from _ema(0.9, "bessel", shape=(2, 3), name="decay_0.9_bessel_n2",
                    steps=(TRAIN, TRAIN, TRAIN, EVAL))
    yield from _ema(0.5, "bessel", shape=(2, 4), name="decay_0.5_bessel_n2_factor2")
    yield from _ema(0.9, "biased", shape=(2, 4), name="decay_0.9_biased_n2")
    yield from _ema(0.9, "bessel", shape=(2, 3, 2, 2), name="decay_0.9_bessel_rank4_nchw")
    yield Spec(FAMILY, "decay_0.9_bessel_rank4_nhwc",
               "EMA decay 0.9 with channels last (NHWC): N = batch x H x W = 16 for the Bessel factor; "
               "using the batch size alone (2) gives factor 2 instead of 16/15.",
               _config(0.9, "bessel", axis=3), [(2, 2, 4, 3)], (TRAIN, TRAIN, TRAIN, EVAL), _shifting)


def _cumulative():
    for variance in ("bessel", "biased"):
        yield Spec(FAMILY, f"cumulative_{variance}_5steps",
                   f"Cumulative moving average (torch momentum=None): after n batches the running stats are "
                   f"the plain mean of the n batch statistics ({variance} variance); an EMA with any fixed "
                   f"decay weighs recent batches more.",
                   _config(variance=variance, rule="cumulative"), [(5, 3)], (TRAIN,) * 5 + (EVAL,), _shifting)
    yield Spec(FAMILY, "cumulative_resume_from_3",
               "Cumulative average resuming with num_updates = 3 already counted: the next batch gets "
               "weight 1/4, not 1 (restarting the count) and not 1/3 (counting from 0 after increment).",
               _config(rule="cumulative"), [(5, 3)], (TRAIN, TRAIN, TRAIN, EVAL), _shifting, num_updates=3)


def _debias_and_schedule():
    for decay in (0.9, 0.99, 0.999):
        yield Spec(FAMILY, f"zero_debias_decay_{decay:g}",
                   f"Zero-debiased EMA (decay {decay:g}): the accumulator starts at 0 and is divided by "
                   f"1 - decay^t, so after one batch the running stats equal that batch's; a plain EMA "
                   f"keeps {decay:g} of the initial value instead.",
                   _config(decay, zero_debias=True), [(6, 3)], (TRAIN, TRAIN, TRAIN, EVAL), _shifting)
    for decay, start in ((0.999, 0), (0.9, 0), (0.999, 100)):
        yield Spec(FAMILY, f"num_updates_schedule_decay_{decay:g}_from_{start}",
                   f"TF num_updates schedule: decay_n = min({decay:g}, (1+n)/(10+n)) with n = {start} "
                   f"updates already done, i.e. {min(decay, (1 + start) / (10 + start)):.4g} for the first "
                   f"batch; ignoring the schedule uses {decay:g} throughout.",
                   _config(decay, num_updates_schedule=True), [(6, 3)], (TRAIN, TRAIN, TRAIN, EVAL),
                   _shifting, num_updates=start)


def _no_update_steps():
    yield Spec(FAMILY, "train_without_update_between",
               "A step that normalizes with batch statistics but must not update running stats (TF1 "
               "training=True with the update ops not run; torch F.batch_norm without buffers): an "
               "implementation that updates anyway shifts the running stats by one extra batch.",
               _config(0.9), [(6, 3)], (TRAIN, TRAIN_NO_UPDATE, TRAIN, EVAL), _shifting)
    yield Spec(FAMILY, "train_without_update_only",
               "Two batch-normalized steps with no update at all, then eval: the running stats must stay "
               "exactly the initial ones.",
               _config(0.9), [(6, 3)], (TRAIN_NO_UPDATE, TRAIN_NO_UPDATE, EVAL), _shifting)
    yield Spec(FAMILY, "eval_between_train_steps",
               "Eval steps between training steps must not update running stats; an implementation that "
               "updates in eval moves them towards the eval batch.",
               _config(0.9), [(6, 3)], (TRAIN, EVAL, TRAIN, EVAL, EVAL), _shifting)
    yield Spec(FAMILY, "decay_0.9_float64",
               "EMA decay 0.9 (Bessel) in float64: float64 frameworks must agree to ~1e-13; a float32 "
               "shortcut inside shows up as 1e-7 relative error.",
               Config(channel_axis=1, input_dtype="float64", param_dtype="float64"), [(6, 3)],
               (TRAIN, TRAIN, TRAIN, EVAL), _shifting)


def _update_first_gap(case) -> str:
    """How far y lands when a step that normalizes with the running statistics and updates them
    normalizes with the statistics AFTER its own update."""
    from ..reference import oracle

    far = max(float(abs(oracle.normalize(s.x, s.expected["running_mean"], s.expected["running_var"],
                                         case.initial_state, case.config) - s.expected["y"]).max())
              for s in case.steps if s.normalize_with == "running" and s.update_running_stats)
    return f"updating first and normalizing with the new statistics puts y off by up to {far:.3g}"


def _restart_gap(case) -> str:
    """running_mean's distance to a run that ignores the resumed counter (num_updates = 0)."""
    from dataclasses import replace

    from ..reference import oracle

    theirs = oracle.run_steps(case.config, replace(case.initial_state, num_updates=0), case.steps)
    return f"{max(float(abs(s.expected['running_mean'] - t['running_mean']).max()) for s, t in zip(case.steps, theirs)):.3g}"


def _running_updates_and_resumes():
    yield Spec(FAMILY, "normalize_running_then_update",
               lambda c: "Steps that normalize with the running statistics AND update them (the model's fourth step "
                         "kind: an inference-mode call that still tracks statistics): y uses the statistics from "
                         f"before the step, then the batch is folded in; {_update_first_gap(c)}.",
               _config(0.9), [(6, 3)], (TRAIN, EVAL_UPDATE, EVAL_UPDATE, EVAL), _shifting)
    yield Spec(FAMILY, "cumulative_normalize_running_then_update",
               lambda c: "Cumulative average resumed at num_updates = 2 with steps that normalize with the running "
                         f"statistics and then update them; {_update_first_gap(c)}.",
               _config(rule="cumulative"), [(5, 3)], (EVAL_UPDATE, EVAL_UPDATE, TRAIN, EVAL), _shifting,
               num_updates=2)
    yield Spec(FAMILY, "num_updates_schedule_decay_0.99_from_20",
               lambda c: "TF num_updates schedule resumed at n = 20: decay_n = min(0.99, (1+n)/(10+n)) = 0.7, 0.71, "
                         "0.719 for the three batches; restarting the count at 0 (0.1, 0.182, 0.25) puts running_mean "
                         f"off by up to {_restart_gap(c)}.",
               _config(0.99, num_updates_schedule=True), [(6, 3)], (TRAIN, TRAIN, TRAIN, EVAL), _shifting,
               num_updates=20)
    yield Spec(FAMILY, "cumulative_resume_from_1_eval_between",
               lambda c: "Cumulative average resumed at num_updates = 1 with an eval step between the updates: the "
                         "batches get weights 1/2 and 1/3; restarting the count (1, then 1/2) puts running_mean off by "
                         f"up to {_restart_gap(c)}.",
               _config(rule="cumulative"), [(5, 3)], (TRAIN, EVAL, TRAIN, EVAL), _shifting, num_updates=1)


def specs():
    yield from _decays()
    yield from _cumulative()
    yield from _debias_and_schedule()
    yield from _no_update_steps()
    yield from _running_updates_and_resumes()
