"""Cross-replica BN in the JAX family: replicated steps run on R separate host CPU devices under
shard_map with the library's own axis name, and the findings that come with it (skipped without
jax / flax; haiku and equinox tests skip without them).

Which devices ran a step is read from JAX itself (the shards of the step's output y), never from
the adapter's bookkeeping; expected numbers come from the float64 oracle (case files, or biased /
zero-debiased twins built from the replicas specs, as the JAX libraries keep a biased running
variance) or, for the mean-of-means finding, from NumPy on the case's data.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import in_framework_process, registered_adapter, requires

# In the JAX test process, under the environment of the matrix's JAX host (framework_processes).
pytestmark = [requires("jax", "flax"), *in_framework_process("jax")]

from bnconform.adapters.base import Unsupported  # noqa: E402
from bnconform.adapters.jax import common, flax_common, replicas  # noqa: E402
from bnconform.judging.judge import judge  # noqa: E402
from bnconform.caseformat.validation import load_case  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ZERO_DEBIAS = {"haiku", "equinox.batch"}  # always zero-debias: their twins are zero-debiased


@pytest.fixture(autouse=True)
def eight_host_devices():
    """JAX reads XLA_FLAGS when it starts its CPU backend; the JAX test process starts with the
    host's flags, so every replicated case has its devices."""
    found = len(common.load_jax().devices("cpu"))
    assert found >= common.HOST_DEVICE_COUNT, f"Expected: {common.HOST_DEVICE_COUNT} CPU devices. Received: {found}"


@functools.lru_cache(maxsize=None)
def adapter(name: str):
    """One instance per adapter for the module, so its compiled programs serve every test."""
    return registered_adapter(name)


@functools.lru_cache(maxsize=None)
def with_findings(name: str):
    """The adapter with its declared cross-replica findings (flax_common.REPLICA_FINDINGS are part of its
    deviations): judge verifies each where its selector applies, as on a run."""
    return adapter(name)


def _case(name: str):
    return load_case(ROOT / "cases" / f"{name}.json")


@functools.lru_cache(maxsize=None)
def _twin(name: str, zero_debias: bool = False, with_dy: bool = False):
    """replicas/<name> with a biased running variance (and zero-debiasing / a random dy): same id,
    seed, inputs and split, expected results from the oracle."""
    from bnconform.specs import all_specs, build
    from bnconform.specs.gradients import random_dy

    spec = next(s for s in all_specs(("replicas",)) if s.name == name)
    config = spec.config.with_running(variance="biased", zero_debias=zero_debias)
    return build(replace(spec, config=config, make_dy=random_dy if with_dy else None))


@pytest.fixture
def shards(monkeypatch):
    """Every replicated step's y shards as JAX placed them: [(device id, first row, end row)]."""
    seen = []
    real = replicas.ran_on

    def recording(y):
        rows = [(s.device.id, s.index[0].start or 0, s.index[0].stop or y.shape[0]) for s in y.addressable_shards]
        seen.append(sorted(rows))
        return real(y)

    monkeypatch.setattr(replicas, "ran_on", recording)
    return seen


def test_the_host_environment_asks_for_eight_cpu_devices_and_keeps_the_users_flags():
    assert "--xla_force_host_platform_device_count=8" in common.X64_ENVIRONMENT["XLA_FLAGS"].split()
    assert common.with_host_devices("--xla_cpu_foo=1") == "--xla_cpu_foo=1 --xla_force_host_platform_device_count=8"
    own = "--xla_force_host_platform_device_count=2"
    assert common.with_host_devices(own) == own  # the user's count wins


def test_unreplicated_cases_stay_on_cpu_0(monkeypatch):
    jax, placed = common.load_jax(), []
    real = flax_common.fetch  # what run_flax_steps reads the device arrays with
    monkeypatch.setattr(flax_common, "fetch", lambda results: placed.append(results) or real(results))
    outputs = adapter("flax.linen").run(_case("formulas/float64_nc_eval"), "cpu")
    devices = {d for r in placed[0] for a in r.values() for d in a.devices()}
    assert devices == {jax.devices("cpu")[0]} and "replicas" not in outputs[0]


@pytest.mark.parametrize("name", ["flax.linen", "flax.nnx", "haiku", "equinox.batch"])
def test_each_replica_runs_on_its_own_device_with_only_its_samples(name, shards):
    case = _case("replicas/r4_biased_update")  # 8 samples as 2, 2, 2, 2
    outputs = adapter(name).run(case, "cpu")
    assert [o["replicas"] for o in outputs] == [4] * len(case.steps)
    assert shards == [[(0, 0, 2), (1, 2, 4), (2, 4, 6), (3, 6, 8)]] * len(case.steps)


def test_flax_pads_unequal_replicas_with_masked_rows(shards):
    outputs = adapter("flax.linen").run(_twin("r2_unequal_far_means_train"), "cpu")  # 6 and 2 samples
    assert shards == [[(0, 0, 6), (1, 6, 12)]] and outputs[0]["replicas"] == 2
    assert outputs[0]["y"].shape[0] == 8  # the 4 padding rows of replica 1 are dropped again
    layout = replicas.Layout((1, 3, 0, 6), masked=True)
    x = np.arange(10.0).reshape(10, 1)
    assert np.array_equal(layout.gather(layout.scatter(x)), x)
    assert np.flatnonzero(layout.mask(2)).tolist() == [0, 6, 7, 8, *range(18, 24)]
    assert replicas.Layout((2, 2), masked=True).mask(3) is None  # equal replicas: no padding, no mask


SYNCHRONIZED = [("flax.linen", "r8_equal_train"), ("flax.linen.exact_variance", "r2_offset_1e4_float32_train"),
                ("flax.nnx", "r4_equal_nchw_train"), ("haiku", "r4_far_means_equal_train"),
                ("equinox.batch", "r4_far_means_equal_train")]


@pytest.mark.parametrize("name, case_name", SYNCHRONIZED)
def test_synchronized_statistics_are_those_of_the_union(name, case_name):
    """Means far apart (or 8 replicas): per-replica statistics or a mean of variances would fail."""
    verdict = judge(adapter(name), _twin(case_name, zero_debias=name in ZERO_DEBIAS), "cpu")
    assert verdict.status == "pass", verdict.detail
    assert "replicas" in verdict.compared


@pytest.mark.parametrize("name", ["flax.linen", "haiku", "equinox.batch"])
def test_gradients_of_a_replicated_step_sum_over_the_replicas(name):
    case = _twin("r4_far_means_equal_train", zero_debias=name in ZERO_DEBIAS, with_dy=True)
    verdict = judge(adapter(name), case, "cpu")
    assert verdict.status == "pass", verdict.detail
    assert {"dx", "dgamma", "dbeta", "replicas"} <= set(verdict.compared)


@pytest.mark.parametrize("name, finding", [("flax.linen", "flax-cross-replica-mean-of-means"),
                                           ("flax.linen.exact_variance", "flax-cross-replica-mean-of-means"),
                                           ("flax.nnx", "nnx-cross-replica-mean-of-means")])
def test_flax_combines_unequal_replicas_as_the_mean_of_their_means(name, finding):
    case = _twin("r2_unequal_far_means_train")
    verdict = judge(with_findings(name), case, "cpu")
    assert verdict.status == "deviation" and verdict.kinds == ["defect"], verdict.detail
    assert verdict.deviations == [finding]
    step, decay = case.steps[0], case.config.running_stats.decay
    x = step.x.astype(np.float64)
    running_mean = adapter(name).run(case, "cpu")[0]["running_mean"]
    used = (running_mean - decay * case.initial_state.running_mean) / (1 - decay)
    np.testing.assert_allclose(used, (x[:6].mean(0) + x[6:].mean(0)) / 2, rtol=1e-5, atol=1e-5)
    assert np.abs(used - x.mean(0)).min() > 1  # the union's mean is about 2.5 away


def test_flax_empty_replica_makes_every_replica_nan():
    verdict = judge(with_findings("flax.linen"), _twin("r4_one_empty_train"), "cpu")  # 3, 0, 3, 2 samples
    assert verdict.status == "deviation", verdict.detail
    assert verdict.deviations == ["flax-cross-replica-empty-replica-nan"]
    outputs = adapter("flax.linen").run(_twin("r4_one_empty_train"), "cpu")
    assert np.isnan(outputs[0]["y"]).all() and outputs[0]["replicas"] == 4


def test_equinox_ema_cannot_train_over_replicas_but_can_on_one_device():
    case = _case("replicas/r4_biased_update")
    verdict = judge(adapter("equinox.ema"), case, "cpu")
    assert verdict.status == "deviation", verdict.detail
    assert verdict.deviations == ["equinox-ema-replicated-training-value-error"]
    one_device = replace(case, steps=[replace(s, replica_sizes=None) for s in case.steps])
    assert "y" in adapter("equinox.ema").run(one_device, "cpu")[0]  # the same batch unsplit trains


@pytest.mark.parametrize("name", ["haiku", "equinox.batch"])
def test_apis_without_a_mask_run_equal_replicas_only(name):
    verdict = judge(adapter(name), _twin("r2_unequal_far_means_train", zero_debias=True), "cpu")
    assert verdict.status == "unsupported" and "replica splits" in verdict.detail, verdict.detail
    with pytest.raises(Unsupported, match="equal replica sizes"):
        replicas.Replicated(_twin("r2_unequal_far_means_train"), "cpu", (6, 2), masked=False)


def test_more_replicas_than_devices_is_unsupported():
    with pytest.raises(Unsupported, match="xla_force_host_platform_device_count"):
        replicas.replica_mesh("cpu", common.HOST_DEVICE_COUNT + 1)


def test_replicated_programs_are_compiled_beside_the_unreplicated_ones():
    subject = type(adapter("flax.linen"))()
    subject.run(_case("replicas/r4_biased_update"), "cpu")
    assert len(subject._steps) == 0 and len(subject._programs.replica_steps) == 1
    subject.run(_case("formulas/float64_nc_eval"), "cpu")
    assert len(subject._steps) == 1 and len(subject._programs.replica_steps) == 1
