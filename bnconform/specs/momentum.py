"""momentum: how running statistics evolve over >= 3 distinct batches, then an eval step.

Each batch has its own mean and spread, so a wrong decay convention (weight on the new batch
instead of the old statistic), a missing Bessel correction, or an extra update shows up in the
running statistics and in the final eval output.
"""

from __future__ import annotations

from . import EVAL, TRAIN, TRAIN_NO_UPDATE, Spec
from ..model import Config, RunningStats

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


def specs():
    yield from _decays()
    yield from _cumulative()
    yield from _debias_and_schedule()
    yield from _no_update_steps()
