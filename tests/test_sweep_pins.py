"""What a version sweep (``bnconform run --versions``) installs beside each framework pin, and the
version ranges of the findings the TensorFlow sweep pinned (docs/environments.md). No environment
is built: these read the declarations only."""

from __future__ import annotations

import pytest

from bnconform.execution.adapter_classes import adapter_class

TF_KERAS_ROWS = ("tf_keras.auto", "tf_keras.fused", "tf_keras.nonfused", "tf_keras.backend",
                 "tf_keras.SyncBatchNormalization")


def requirements(name: str, version: str) -> tuple[str, ...]:
    return adapter_class(name).version_environment(version).requirements


@pytest.mark.parametrize("name", TF_KERAS_ROWS)
def test_tf_keras_runs_on_the_tensorflow_of_its_own_minor(name):
    assert requirements(name, "2.16.0") == ("tf_keras==2.16.0", "tensorflow~=2.16.0")
    assert requirements(name, "2.21.0") == ("tf_keras==2.21.0", "tensorflow~=2.21.0")


@pytest.mark.parametrize("version, tensorflow, jax", [
    ("3.3.3", ("tensorflow~=2.16.0",), ("jax[cpu]==0.4.26", "numpy<2", "packaging")),
    ("3.8.0", ("tensorflow~=2.18.0",), ("jax[cpu]==0.4.38",)),
    ("3.15.1", ("tensorflow~=2.21.0",), ("jax[cpu]==0.10.2",)),
    ("3.12.0", ("tensorflow",), ("jax[cpu]==0.8.0",)),  # swept on JAX only: TensorFlow unpinned
    ("3.6.0", ("tensorflow",), ("jax",)),  # a minor without a pin: the newest backend
])
def test_keras3_gets_a_backend_of_its_era(version, tensorflow, jax):
    for name in ("keras3.tensorflow", "keras3.tensorflow.synchronized"):
        assert requirements(name, version) == (f"keras=={version}", *tensorflow)
    for name in ("keras3.jax", "keras3.jax.DataParallel"):
        assert requirements(name, version) == (f"keras=={version}", *jax)
    assert requirements("keras3.torch", version) == (f"keras=={version}", "torch")


@pytest.mark.parametrize("version, jax", [("0.10.7", "jax[cpu]==0.6.2"), ("0.11.2", "jax[cpu]==0.7.1"),
                                          ("0.12.8", "jax[cpu]==0.10.2"), ("0.9.0", "jax[cpu]")])
def test_flax_gets_the_jax_of_its_era(version, jax):
    for name in ("flax.linen", "flax.linen.exact_variance", "flax.nnx"):
        assert requirements(name, version) == (f"flax=={version}", jax)


def test_keras3_float64_as_float32_holds_from_3_12():
    """Measured on JAX: 3.3.3, 3.8.0 and 3.11.3 compute a float64 layer in float64, 3.12.0 and 3.15.1 in float32."""
    declared = _declared("keras3.jax", "keras3-float64-computed-in-float32")
    assert not declared.holds_in("3.11.3 (jax 0.7.1)") and declared.holds_in("3.12.0 (jax 0.8.0)")


def _declared(name: str, deviation: str):
    return next(d for d in adapter_class(name).deviations if d.name == deviation)


@pytest.mark.parametrize("name, prefix", [("tf.nn", "tf-nn"), ("tf.nn+ema", "tf-ema")])
def test_bfloat16_mean_findings_split_at_tensorflow_2_16(name, prefix):
    """Measured: 2.12.1 to 2.15.1 accumulate a bfloat16 mean in bfloat16, 2.16.2 and 2.21.0 in float32."""
    before = _declared(name, f"{prefix}-bfloat16-mean-accumulated-in-bfloat16")
    after = _declared(name, f"{prefix}-bfloat16-moments-shift-y")
    for version, old in (("2.12.1", True), ("2.15.1", True), ("2.16.2", False), ("2.21.0", False)):
        assert (before.holds_in(version), after.holds_in(version)) == (old, not old)


def test_the_named_cases_match_their_one_step_cases_too():
    from types import SimpleNamespace

    from bnconform.adapters.tensorflow.moments_findings import BFLOAT16_ACCUMULATION_SHOWS as shows

    assert shows(SimpleNamespace(id="formulas/bfloat16_nlc_n512_offset_batch_no_update#step0"), "cpu")
    assert shows(SimpleNamespace(id="formulas/bfloat16_nlc_n512_offset_batch_no_update"), "cpu")
    assert not shows(SimpleNamespace(id="formulas/bfloat16_nc_train#step0"), "cpu")


def test_fused_rank5_bfloat16_raises_only_before_tensorflow_2_14():
    raises = _declared("tf.fused_batch_norm", "fused-bn-cpu-bfloat16-rank5-raises")
    assert raises.holds_in("2.13.1") and not raises.holds_in("2.14.1") and not raises.holds_in("2.21.0")
