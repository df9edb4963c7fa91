"""The JAX-family adapters' gradient plumbing: jax.vjp of the step that produced y, programs
compiled only for steps with dy, the output layout, and the backward findings (skipped without
jax / flax; haiku and equinox tests skip without them).

Expected numbers come from the float64 oracle (cases on disk, or twins built from their specs),
never from the adapters.
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

from bnconform.judging.judge import judge  # noqa: E402
from bnconform.caseformat.validation import load_case  # noqa: E402

CASES = Path(__file__).resolve().parent.parent / "cases"
ADAPTERS = ("flax.linen", "flax.nnx", "haiku", "equinox.batch", "equinox.ema")


@functools.lru_cache(maxsize=None)
def adapter(name: str):
    """One instance per adapter for the module, so its compiled programs serve every test."""
    return registered_adapter(name)


def _case(name: str):
    return load_case(CASES / f"{name}.json")


@functools.lru_cache(maxsize=None)
def _twin(spec_id: str, **running):
    """The case of ``spec_id`` with other running-statistics conventions (same id, seed, inputs,
    state and dy; expected results from the oracle): the gradients family keeps a Bessel running
    variance, which no JAX library has."""
    from bnconform.specs import all_specs, build

    spec = next(s for s in all_specs(("gradients",)) if s.id == spec_id)
    return build(replace(spec, config=spec.config.with_running(**running)))


def _compiled(cache) -> int:
    """How many XLA programs a JitCache's functions hold (one per input shape / dtype)."""
    return sum(function._cache_size() for function in cache._functions.values())


def _without_dy(case):
    return replace(case, steps=[replace(s, dy=None, expected={k: v for k, v in s.expected.items()
                                                              if k not in ("dx", "dgamma", "dbeta")})
                                for s in case.steps])


def test_differentiated_is_the_vjp_of_the_step_with_its_other_outputs_as_auxiliary():
    from bnconform.adapters.jax.common import differentiated, load_jax

    jnp = load_jax().numpy

    def step(params, counter, x):  # y = a * x^2 + b; the counter is state, not differentiated
        return params["a"] * x ** 2 + params["b"], counter + jnp.sum(x)

    x, dy = jnp.array([1.0, -2.0, 3.0]), jnp.array([0.5, 1.0, -1.0])
    y, counter, dx, dparams = differentiated(step, x_at=2)({"a": 2.0, "b": 1.0}, 10.0, x, dy)
    np.testing.assert_allclose(dx, dy * 2 * 2.0 * np.array([1.0, -2.0, 3.0]))
    np.testing.assert_allclose([dparams["a"], dparams["b"]], [0.5 * 1 + 4 - 9, 0.5])
    assert float(counter) == 12.0 and y.shape == (3,)


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_every_jax_adapter_differentiates_both_modes(name):
    assert adapter(name).capabilities.gradients == frozenset({"batch", "running"})


@pytest.mark.parametrize("name", ["flax.linen", "haiku", "equinox.batch"])
def test_a_forward_only_case_compiles_no_gradient_program(name):
    subject = adapter(name)
    before = _compiled(subject._gradient_steps)
    results = subject.run(_without_dy(_case("gradients/float64_eval")), "cpu")
    assert _compiled(subject._gradient_steps) == before
    assert not {"dx", "dgamma", "dbeta"} & set(results[0])


@pytest.mark.parametrize("name", ["flax.linen", "flax.nnx", "haiku", "equinox.batch"])
def test_inference_gradients_match_the_oracle(name):
    verdict = judge(adapter(name), _case("gradients/float64_eval"), "cpu")
    assert verdict.status == "pass", verdict.detail
    assert {"dx", "dgamma", "dbeta"} <= set(verdict.compared)


@pytest.mark.parametrize("name", ["flax.linen", "flax.nnx", "haiku", "equinox.batch"])
def test_training_dx_flows_through_the_batch_moments(name):
    # dy all ones: the model's training dx is ~0 (a backward treating mu and var as constants
    # gives gamma / sigma instead); channels last, float64
    case = _twin("gradients/dy_ones_nhwc_float64_train", variance="biased", zero_debias=name in ("haiku", "equinox.batch"))
    verdict = judge(adapter(name), case, "cpu")
    assert verdict.status == "pass", verdict.detail
    assert "dx" in verdict.compared


def test_a_step_with_dy_runs_the_program_of_its_own_mode_only():
    subject = adapter("flax.linen")
    case = _case("gradients/train_train_eval_biased")  # batch, batch, running: each with dy
    forward_before = _compiled(subject._steps)
    verdict = judge(subject, case, "cpu")
    assert verdict.status == "pass", verdict.detail
    key = (case.config.channel_axis, True, True, True)
    assert set(subject._gradient_steps._functions) >= {key + (True,), key + (False,)}  # one per mode
    assert _compiled(subject._steps) == forward_before  # the two-mode forward program was not used


def test_only_steps_with_dy_return_gradients():
    case = _case("gradients/train_train_eval_biased")
    steps = [replace(s, dy=None) if i == 0 else s for i, s in enumerate(case.steps)]
    results = adapter("flax.linen").run(replace(case, steps=steps), "cpu")
    assert "dx" not in results[0] and {"dx", "dgamma", "dbeta"} <= set(results[1])


def test_gradient_layout_half_input_and_per_channel_parameters():
    # float16 x and dy with float32 parameters: dx in the input dtype, dgamma / dbeta in the
    # parameter dtype, [C] even where haiku shapes its parameters like the mean (1, C, 1, 1)
    case = _case("gradients/float16_eval")
    for name in ("flax.linen", "haiku"):
        found = adapter(name).run(case, "cpu")[0]
        assert found["dx"].dtype == np.float16 and found["dx"].shape == case.steps[0].x.shape
        assert found["dgamma"].dtype == np.float32 and found["dgamma"].shape == (case.channels,)
        assert found["dbeta"].shape == (case.channels,)


def test_no_parameter_gradient_where_scale_or_center_is_off():
    found = adapter("flax.linen").run(_case("gradients/scale_off_center_off_eval"), "cpu")[0]
    assert "dx" in found and "dgamma" not in found and "dbeta" not in found
    verdict = judge(adapter("equinox.batch"), _case("gradients/scale_off_center_off_eval"), "cpu")
    assert verdict.status == "pass", verdict.detail


def test_equinox_ema_blend_reaches_dx_even_at_n1():
    # N = 1: the model's dx is 0; mode 'ema' normalizes with a blend of batch and running
    # statistics, so dx keeps a (momentum) share of an affine map
    verdict = judge(adapter("equinox.ema"), _case("gradients/n1_train"), "cpu")
    assert verdict.status == "deviation", verdict.detail
    assert verdict.deviations == ["equinox-ema-blended-training-normalization"]
    assert any(m["output"] == "dx" for m in verdict.mismatches)


def test_equinox_ema_blend_reaches_dgamma_when_gamma_is_zero():
    # gamma == 0 hides the blend from y (y = beta), not from dgamma = sum(dy * xhat)
    verdict = judge(adapter("equinox.ema"), _case("gradients/gamma_zero_train_biased"), "cpu")
    assert verdict.status == "deviation", verdict.detail
    assert [m["output"] for m in verdict.mismatches] == ["dgamma"]


# Backward findings, each declared deviation observed and nothing else: on a case file (running
# None), or on a biased zero-debiased twin the matrix does not have (haiku and equinox "batch"
# always zero-debias).
TWIN_FINDINGS = [
    ("flax.linen", "gradients/offset_1e4_float32_train_biased", None, ["flax-fast-variance-cancellation"]),
    ("haiku", "gradients/bfloat16_train", {"zero_debias": True},
     ["haiku-half-precision-moments", "haiku-half-precision-normalization-gradient"]),
    ("haiku", "gradients/offset_1e4_float32_train_biased_zero_debias", None,
     ["haiku-one-pass-variance-cancellation", "haiku-unclamped-negative-variance"]),
    ("equinox.batch", "gradients/float16_train", {"zero_debias": True},
     ["equinox-batch-half-precision-normalization-gradient"]),
]


@pytest.mark.parametrize("name, spec_id, running, names", TWIN_FINDINGS)
def test_backward_findings_on_biased_twins(name, spec_id, running, names):
    case = _case(spec_id) if running is None else _twin(spec_id, variance="biased", **running)
    verdict = judge(adapter(name), case, "cpu")
    assert verdict.status == "deviation", verdict.detail
    assert sorted(verdict.deviations) == sorted(names)
    assert {"dx", "dgamma"} & {m["output"] for m in verdict.mismatches}
