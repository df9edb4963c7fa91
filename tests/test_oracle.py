"""The float64 oracle against examples small enough to compute by hand.

Every expected number here comes from plain arithmetic on literals written in the test (or
math.sqrt / fractions), never from bnconform itself, so a bug in the oracle cannot hide by being
repeated on the expected side.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from bnconform.reference import oracle
from bnconform.caseformat.model import Config, RunningStats, State, Step

TRAIN = ("batch", True)
EVAL = ("running", False)
TRAIN_NO_UPDATE = ("batch", False)
EPS = 1e-5


def make_state(channels=1, gamma=1.0, beta=0.0, mean=0.0, var=1.0, num_updates=0) -> State:
    """Per-channel parameters, each given as a scalar (same for all channels) or a list."""
    def vec(value):
        return np.array(value if isinstance(value, list) else [value] * channels, dtype=np.float64)
    return State(vec(gamma), vec(beta), vec(mean), vec(var), num_updates)


def run(config: Config, batches, kinds=None, state: State | None = None) -> list[dict]:
    """Run the oracle over ``batches`` (nested lists); every step is TRAIN unless ``kinds`` says."""
    xs = [np.array(b, dtype=np.float64) for b in batches]
    kinds = kinds or [TRAIN] * len(xs)
    state = state or make_state(channels=xs[0].shape[config.channel_axis])
    steps = [Step(kind[0], kind[1], x) for kind, x in zip(kinds, xs)]
    return oracle.run_steps(config, state, steps)


def ema_config(decay=0.9, variance="biased", **extra) -> Config:
    return Config(channel_axis=1, running_stats=RunningStats(decay=decay, variance=variance, **extra))


def close(got, expected, rel=1e-14):
    """Elementwise float64 closeness to hand-computed numbers (fractions allowed)."""
    got = np.asarray(got, dtype=np.float64).reshape(-1)
    expected = [float(e) for e in np.asarray(expected, dtype=object).reshape(-1)]
    assert len(got) == len(expected), f"Expected: {len(expected)} values. Received: {len(got)}"
    for g, e in zip(got, expected):
        assert math.isclose(g, e, rel_tol=rel, abs_tol=1e-300), f"Expected: {e!r}. Received: {g!r}"


# --- forward pass -------------------------------------------------------------------------------

def test_two_values_mean_biased_variance_and_output():
    (out,) = run(Config(channel_axis=1, epsilon=EPS), [[[1.0], [3.0]]])
    close(out["batch_mean"], [2.0])
    close(out["batch_var"], [1.0])  # ((1-2)^2 + (3-2)^2) / 2, biased
    close(out["y"], [-1 / math.sqrt(1 + EPS), 1 / math.sqrt(1 + EPS)])


def test_gamma_and_beta_per_channel():
    # channel 0: {1, 3} -> mean 2, var 1; channel 1: {10, 14} -> mean 12, var 4
    state = make_state(gamma=[2.0, -0.5], beta=[0.25, 3.0], channels=2)
    (out,) = run(Config(channel_axis=1, epsilon=EPS), [[[1.0, 10.0], [3.0, 14.0]]], state=state)
    d0, d1 = math.sqrt(1 + EPS), math.sqrt(4 + EPS)
    close(out["y"], [2 * -1 / d0 + 0.25, -0.5 * -2 / d1 + 3.0,
                     2 * 1 / d0 + 0.25, -0.5 * 2 / d1 + 3.0])
    close(out["batch_mean"], [2.0, 12.0])
    close(out["batch_var"], [1.0, 4.0])


def test_eval_normalizes_with_running_statistics_and_changes_nothing():
    state = make_state(gamma=3.0, beta=1.0, mean=1.0, var=4.0, num_updates=7)
    (out,) = run(Config(channel_axis=1, epsilon=EPS), [[[3.0], [-1.0]]], [EVAL], state)
    close(out["y"], [3 * 2 / math.sqrt(4 + EPS) + 1, 3 * -2 / math.sqrt(4 + EPS) + 1])
    assert out["batch_mean"] is None and out["batch_var"] is None
    close(out["running_mean"], [1.0])
    close(out["running_var"], [4.0])
    assert out["num_updates"] == 7


@pytest.mark.parametrize("mode, eps, expected_y", [
    ("add_inside_sqrt", 0.25, 1 / math.sqrt(1.25)),   # x = {0, 2}: mean 1, var 1, |x - mean| = 1
    ("add_outside_sqrt", 0.25, 1 / (1 + 0.25)),
    ("max_inside_sqrt", 0.25, 1 / math.sqrt(1.0)),    # var 1 > eps: eps has no effect
    ("max_inside_sqrt", 4.0, 1 / math.sqrt(4.0)),     # var 1 < eps: eps replaces it
])
def test_epsilon_placement(mode, eps, expected_y):
    (out,) = run(Config(channel_axis=1, epsilon=eps, epsilon_mode=mode), [[[0.0], [2.0]]])
    close(out["y"], [-expected_y, expected_y])


def test_epsilon_floor_takes_the_larger_value():
    config = Config(channel_axis=1, epsilon=0.01, epsilon_floor=0.25)
    (out,) = run(config, [[[0.0], [2.0]]])
    close(out["y"], [-1 / math.sqrt(1.25), 1 / math.sqrt(1.25)])


@pytest.mark.parametrize("scale, center, expected", [
    (True, True, [3 * -1 + 5, 3 * 1 + 5]),
    (False, True, [-1 + 5, 1 + 5]),    # gamma = 3 is stored but must be ignored
    (True, False, [3 * -1, 3 * 1]),    # beta = 5 is stored but must be ignored
    (False, False, [-1, 1]),
])
def test_scale_and_center_switches(scale, center, expected):
    config = Config(channel_axis=1, epsilon=0.0, scale=scale, center=center)
    (out,) = run(config, [[[1.0], [3.0]]], state=make_state(gamma=3.0, beta=5.0))
    close(out["y"], expected)


def test_channel_axis_last_reduces_over_all_other_axes():
    # shape (2, 2, 2), channels on axis 2.
    # channel 0 holds {1, 3, 5, 7}: mean 4, var (9 + 1 + 1 + 9) / 4 = 5
    # channel 1 holds {0, 0, 0, 4}: mean 1, var (1 + 1 + 1 + 9) / 4 = 3
    x = [[[1.0, 0.0], [3.0, 0.0]], [[5.0, 0.0], [7.0, 4.0]]]
    (out,) = run(Config(channel_axis=2, epsilon=0.0), [x], state=make_state(channels=2))
    close(out["batch_mean"], [4.0, 1.0])
    close(out["batch_var"], [5.0, 3.0])
    s5, s3 = math.sqrt(5), math.sqrt(3)
    close(out["y"], [-3 / s5, -1 / s3, -1 / s5, -1 / s3, 1 / s5, -1 / s3, 3 / s5, 3 / s3])


def test_channel_axis_zero_reduces_over_axis_one():
    # shape (2, 3) with channels on axis 0: channel 0 = {1, 2, 3}, channel 1 = {0, 0, 6}
    (out,) = run(Config(channel_axis=0, epsilon=0.0), [[[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]]],
                 state=make_state(channels=2))
    close(out["batch_mean"], [2.0, 2.0])
    close(out["batch_var"], [Fraction(2, 3), 8.0])  # (1+0+1)/3 and (4+4+16)/3
    s0, s1 = math.sqrt(2 / 3), math.sqrt(8)
    close(out["y"], [-1 / s0, 0.0, 1 / s0, -2 / s1, -2 / s1, 4 / s1])


def test_one_value_per_channel_normalizes_to_beta():
    (out,) = run(Config(channel_axis=1, epsilon=EPS), [[[4.0, -7.0]]],
                 state=make_state(channels=2, beta=[0.5, -2.0]))
    assert out["y"].tolist() == [[0.5, -2.0]]  # 0 / sqrt(0 + eps) = 0 exactly
    close(out["batch_var"], [0.0, 0.0])


def test_zero_variance_with_zero_epsilon_is_nan_on_that_channel_only():
    (out,) = run(Config(channel_axis=1, epsilon=0.0), [[[2.0, 1.0], [2.0, 3.0]]],
                 state=make_state(channels=2))
    assert np.isnan(out["y"][:, 0]).all()  # 0/0 per IEEE
    close(out["y"][:, 1], [-1.0, 1.0])


def test_nan_in_one_channel_stays_in_that_channel():
    config = ema_config(decay=0.5, variance="biased")
    (out,) = run(config, [[[1.0, float("nan")], [3.0, 5.0]]], state=make_state(channels=2))
    assert np.isnan(out["y"][:, 1]).all()
    assert np.isnan(out["batch_mean"][1]) and np.isnan(out["batch_var"][1])
    assert np.isnan(out["running_mean"][1]) and np.isnan(out["running_var"][1])
    close(out["y"][:, 0], [-1 / math.sqrt(1 + 1e-5), 1 / math.sqrt(1 + 1e-5)])
    close(out["batch_mean"][:1], [2.0])
    close(out["running_mean"][:1], [0.5 * 0 + 0.5 * 2])
    close(out["running_var"][:1], [0.5 * 1 + 0.5 * 1])


def test_infinity_in_one_channel_makes_that_channel_nan():
    (out,) = run(Config(channel_axis=1), [[[1.0, float("inf")], [3.0, 5.0]]], state=make_state(channels=2))
    assert np.isnan(out["y"][:, 1]).all()  # inf - inf in the centered values
    assert np.isfinite(out["y"][:, 0]).all()


# --- running statistics -------------------------------------------------------------------------

def test_ema_decay_is_the_weight_on_the_old_statistic_over_two_batches():
    # batch 1 {1, 3}: mean 2, biased var 1;  batch 2 {0, 4}: mean 2, biased var 4
    state = make_state(mean=0.0, var=1.0)
    out = run(ema_config(decay=0.9), [[[1.0], [3.0]], [[0.0], [4.0]]], state=state)
    d = Fraction(9, 10)
    mean1, var1 = d * 0 + (1 - d) * 2, d * 1 + (1 - d) * 1
    mean2, var2 = d * mean1 + (1 - d) * 2, d * var1 + (1 - d) * 4
    close(out[0]["running_mean"], [mean1])   # 0.2
    close(out[0]["running_var"], [var1])     # 1.0
    close(out[1]["running_mean"], [mean2])   # 0.38
    close(out[1]["running_var"], [var2])     # 1.3
    assert [o["num_updates"] for o in out] == [1, 2]


def test_bessel_factor_at_two_samples_is_two():
    # {1, 3}: biased var 1, unbiased 1 * 2 / (2 - 1) = 2; decay 0.5 from running var 1
    out = run(ema_config(decay=0.5, variance="bessel"), [[[1.0], [3.0]]])
    close(out[0]["batch_var"], [1.0])  # the batch variance itself stays biased
    close(out[0]["running_var"], [0.5 * 1 + 0.5 * 2])


def test_bessel_counts_every_reduced_element_not_the_batch_size():
    # shape (1, 1, 4): N = 4 per channel, so the factor is 4/3 even though the batch size is 1
    # {0, 0, 4, 4}: mean 2, biased var 4
    config = Config(channel_axis=1, running_stats=RunningStats(decay=0.0, variance="bessel"))
    (out,) = run(config, [[[[0.0, 0.0, 4.0, 4.0]]]])
    close(out["running_var"], [Fraction(4) * 4 / 3])


def test_decay_zero_keeps_the_batch_and_decay_one_keeps_the_old_value():
    batch = [[[1.0], [3.0]]]
    new = run(ema_config(decay=0.0, variance="bessel"), batch, state=make_state(mean=9.0, var=9.0))
    close(new[0]["running_mean"], [2.0])
    close(new[0]["running_var"], [2.0])
    old = run(ema_config(decay=1.0, variance="bessel"), batch, state=make_state(mean=9.0, var=9.0))
    close(old[0]["running_mean"], [9.0])
    close(old[0]["running_var"], [9.0])
    assert old[0]["num_updates"] == 1  # an update happened, it just moved nothing


def test_cumulative_average_of_three_batches():
    # {1, 3}: mean 2, Bessel var 2;  {3, 7}: mean 5, Bessel var 8;  {8, 14}: mean 11, Bessel var 18
    config = Config(channel_axis=1, running_stats=RunningStats(rule="cumulative", decay=None))
    out = run(config, [[[1.0], [3.0]], [[3.0], [7.0]], [[8.0], [14.0]]],
              state=make_state(mean=100.0, var=100.0))  # the initial value gets weight 0
    close([o["running_mean"][0] for o in out], [2, Fraction(2 + 5, 2), Fraction(2 + 5 + 11, 3)])
    close([o["running_var"][0] for o in out], [2, Fraction(2 + 8, 2), Fraction(2 + 8 + 18, 3)])
    assert [o["num_updates"] for o in out] == [1, 2, 3]


def test_cumulative_resumes_from_num_updates():
    # three updates already counted: the next batch (mean 2) has weight 1/4
    config = Config(channel_axis=1, running_stats=RunningStats(rule="cumulative", decay=None, variance="biased"))
    (out,) = run(config, [[[1.0], [3.0]]], state=make_state(mean=6.0, var=5.0, num_updates=3))
    close(out["running_mean"], [6 + Fraction(2 - 6, 4)])  # 5
    close(out["running_var"], [5 + Fraction(1 - 5, 4)])   # 4
    assert out["num_updates"] == 4


def test_zero_debias_after_one_batch_equals_the_batch_statistic():
    out = run(ema_config(decay=0.9, variance="bessel", zero_debias=True),
              [[[1.0], [3.0]], [[3.0], [7.0]]], state=make_state(mean=7.0, var=7.0))
    close(out[0]["running_mean"], [2.0])  # 0.1 * 2 / (1 - 0.9): the initial 7 plays no part
    close(out[0]["running_var"], [2.0])
    d = Fraction(9, 10)
    z_mean = d * ((1 - d) * 2) + (1 - d) * 5
    z_var = d * ((1 - d) * 2) + (1 - d) * 8
    close(out[1]["running_mean"], [z_mean / (1 - d * d)])  # 0.68 / 0.19
    close(out[1]["running_var"], [z_var / (1 - d * d)])


def test_num_updates_schedule_caps_the_decay():
    # first update: n = 0 -> min(0.999, 1/10) = 0.1; second: n = 1 -> min(0.999, 2/11)
    config = ema_config(decay=0.999, num_updates_schedule=True)
    out = run(config, [[[1.0], [3.0]], [[4.0], [6.0]]], state=make_state(mean=0.0))
    first = Fraction(1, 10) * 0 + Fraction(9, 10) * 2
    second = Fraction(2, 11) * first + Fraction(9, 11) * 5
    close(out[0]["running_mean"], [first])
    close(out[1]["running_mean"], [second])


@pytest.mark.parametrize("decay, start, used", [
    (0.999, 100, Fraction(101, 110)),   # the schedule is still below 0.999
    (0.9, 100, Fraction(9, 10)),        # the schedule (0.918) is above 0.9: decay wins
])
def test_num_updates_schedule_counts_from_the_initial_num_updates(decay, start, used):
    config = ema_config(decay=decay, num_updates_schedule=True)
    (out,) = run(config, [[[1.0], [3.0]]], state=make_state(mean=1.0, num_updates=start))
    close(out["running_mean"], [used * 1 + (1 - used) * 2])
    assert out["num_updates"] == start + 1


def test_output_uses_statistics_from_before_the_step_update():
    # step 2 is eval: it must see the running mean after step 1 (0.5 * 0 + 0.5 * 2 = 1)
    out = run(ema_config(decay=0.5), [[[1.0], [3.0]], [[1.0], [3.0]]], [TRAIN, EVAL])
    var = 0.5 * 1 + 0.5 * 1
    close(out[1]["y"], [(1 - 1) / math.sqrt(var + 1e-5), (3 - 1) / math.sqrt(var + 1e-5)])


def test_batch_step_without_update_leaves_running_state_alone():
    state = make_state(mean=0.5, var=2.0, num_updates=4)
    (out,) = run(ema_config(decay=0.5), [[[1.0], [3.0]]], [TRAIN_NO_UPDATE], state)
    close(out["y"], [-1 / math.sqrt(1 + 1e-5), 1 / math.sqrt(1 + 1e-5)])  # batch statistics
    close(out["batch_mean"], [2.0])
    close(out["running_mean"], [0.5])
    close(out["running_var"], [2.0])
    assert out["num_updates"] == 4


# --- canonical choices where the textbook answer is undefined -----------------------------------

@pytest.mark.parametrize("rule", ["ema", "cumulative"])
def test_empty_batch_changes_nothing(rule):
    running = RunningStats(rule=rule, decay=0.9 if rule == "ema" else None)
    config = Config(channel_axis=1, running_stats=running)
    state = make_state(channels=2, mean=[0.5, -1.0], var=[2.0, 3.0], num_updates=5)
    (out,) = run(config, [np.zeros((0, 2))], state=state)
    assert out["y"].shape == (0, 2)
    assert out["batch_mean"] is None and out["batch_var"] is None
    assert out["running_mean"].tolist() == [0.5, -1.0]
    assert out["running_var"].tolist() == [2.0, 3.0]
    assert out["num_updates"] == 5


def test_empty_batch_does_not_advance_zero_debias():
    # batches {1, 3} (mean 2), empty, {3, 7} (mean 5): the empty one must not count as a step
    out = run(ema_config(decay=0.9, zero_debias=True), [[[1.0], [3.0]], np.zeros((0, 1)), [[3.0], [7.0]]])
    d = Fraction(9, 10)
    close(out[1]["running_mean"], [2.0])
    close(out[2]["running_mean"], [(d * (1 - d) * 2 + (1 - d) * 5) / (1 - d * d)])
    assert [o["num_updates"] for o in out] == [1, 1, 2]


def test_single_value_with_bessel_updates_running_var_with_zero():
    # N = 1: biased var 0, factor N / max(N - 1, 1) = 1 -> the update uses 0, never 0/0 = NaN
    state = make_state(mean=1.0, var=2.0)
    (out,) = run(ema_config(decay=0.5, variance="bessel"), [[[4.0]]], state=state)
    close(out["running_var"], [0.5 * 2 + 0.5 * 0])
    close(out["running_mean"], [0.5 * 1 + 0.5 * 4])
    assert out["y"].tolist() == [[0.0]]


def test_single_value_cumulative_stores_zero_variance():
    config = Config(channel_axis=1, running_stats=RunningStats(rule="cumulative", decay=None))
    out = run(config, [[[4.0]], [[1.0], [3.0]]])
    close(out[0]["running_var"], [0.0])
    close(out[1]["running_var"], [Fraction(0 + 2, 2)])  # then Bessel var 2 of {1, 3}
