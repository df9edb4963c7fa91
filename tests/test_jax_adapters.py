"""Fast checks of the JAX-family adapters' translation and caching (skipped without jax / flax)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import in_framework_process, requires

# In the JAX test process, under the environment of the matrix's JAX host (framework_processes).
pytestmark = [requires("jax", "flax"), *in_framework_process("jax")]

from bnconform.adapters.jax.common import jax_device  # noqa: E402
from bnconform.adapters.jax.flax_common import flax_state  # noqa: E402
from bnconform.adapters.jax.flax_linen import FlaxLinenAdapter  # noqa: E402
from bnconform.judging.judge import judge  # noqa: E402
from bnconform.caseformat.validation import load_case  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "cases"


def _case(name: str):
    return load_case(CASES / f"{name}.json")


def test_importing_the_adapter_modules_does_not_import_jax(fresh_imports):
    assert fresh_imports["jax adapters"]["frameworks"] == [], fresh_imports


def test_flax_variables_hold_the_case_parameters_and_statistics():
    case = _case("formulas/scale_on_center_off_train")
    params, stats = flax_state(case, jax_device("cpu"))
    np.testing.assert_array_equal(np.asarray(params["scale"]), case.initial_state.gamma)
    assert "bias" not in params  # center=False: flax must not see a bias at all
    np.testing.assert_array_equal(np.asarray(stats["var"]), case.initial_state.running_var)


def test_float64_case_runs_in_float64():
    results = FlaxLinenAdapter().run(_case("formulas/float64_nc_eval"), "cpu")
    assert results[0]["y"].dtype == np.float64


def test_one_compiled_program_serves_cases_of_the_same_shape():
    adapter = FlaxLinenAdapter()
    first, second = _case("momentum/decay_0.9_bessel_3steps"), _case("momentum/decay_0.5_bessel_3steps")
    assert first.steps[0].x.shape == second.steps[0].x.shape  # different decay, same input shape
    adapter.run(first, "cpu")
    adapter.run(second, "cpu")
    assert len(adapter._steps) == 1 and adapter._steps.hits >= 1
    step_fn = adapter._steps.get(1, True, True, True)
    assert step_fn._cache_size() == 1  # decay and epsilon are traced, train/eval share the program


def test_flax_keeps_a_biased_running_variance_as_its_convention():
    adapter = FlaxLinenAdapter()
    bessel = judge(adapter, _case("momentum/decay_0.9_bessel_3steps"), "cpu")
    assert bessel.status == "unsupported"
    assert "always uses a biased running variance" in bessel.detail and "depend on it" in bessel.detail
    biased = judge(adapter, _case("momentum/decay_0.9_biased_3steps"), "cpu")
    assert biased.status == "pass", biased.detail
    assert biased.deviations == [] and biased.kinds == []


def test_flax_bessel_case_whose_results_do_not_depend_on_the_kind_runs():
    # decay 1 never folds a batch in, so the running variance kind cannot matter: the case runs.
    verdict = judge(FlaxLinenAdapter(), _case("momentum/decay_1_bessel_3steps"), "cpu")
    assert verdict.status == "pass", verdict.detail


def test_flax_has_no_cumulative_rule():
    verdict = judge(FlaxLinenAdapter(), _case("momentum/cumulative_biased_5steps"), "cpu")
    assert verdict.status == "unsupported" and "running-statistics rules" in verdict.detail


def test_flax_fast_variance_cancellation_is_a_precision_deviation():
    verdict = judge(FlaxLinenAdapter(), _case("momentum/decay_0.9_biased_n2"), "cpu")
    assert verdict.status == "deviation", verdict.detail
    assert verdict.deviations == ["flax-fast-variance-cancellation"] and verdict.kinds == ["precision"]


def test_flax_exact_variance_passes_the_batch_fast_variance_cancels():
    from bnconform.adapters.jax.flax_linen import FlaxLinenExactVarianceAdapter

    verdict = judge(FlaxLinenExactVarianceAdapter(), _case("momentum/decay_0.9_biased_n2"), "cpu")
    assert verdict.status == "pass", verdict.detail


def test_flax_empty_batch_nan_state_is_a_defect():
    verdict = judge(FlaxLinenAdapter(), _case("degenerate/n0_rank2_train"), "cpu")
    assert verdict.status == "deviation" and verdict.kinds == ["defect"], verdict.detail


def test_flax_defaults_are_the_installed_layer_defaults():
    from bnconform.adapters.jax.flax_linen import load_linen

    layer = load_linen().BatchNorm()
    defaults = FlaxLinenAdapter().framework_defaults()
    assert defaults == {"decay_parameter": layer.momentum, "epsilon": layer.epsilon}
    assert FlaxLinenAdapter.decay_parameter == ("momentum", "old")


def test_haiku_always_zero_debiases_so_a_plain_ema_case_is_unsupported():
    pytest.importorskip("haiku")
    from bnconform.adapters.jax.haiku import HaikuAdapter

    adapter = HaikuAdapter()
    plain = judge(adapter, _case("momentum/decay_0.9_biased_3steps"), "cpu")
    assert plain.status == "unsupported"
    assert "always uses zero-debiased running statistics" in plain.detail
    debiased = judge(adapter, _case("momentum/zero_debias_decay_0.9_biased"), "cpu")
    assert debiased.status == "pass", debiased.detail


def test_haiku_cannot_resume_an_update_count():
    pytest.importorskip("haiku")
    from bnconform.adapters.jax.haiku import HaikuAdapter

    verdict = judge(HaikuAdapter(), _case("momentum/num_updates_schedule_decay_0.999_from_100_biased"), "cpu")
    assert verdict.status == "unsupported" and "initial update counts" in verdict.detail


def test_haiku_state_is_the_canonical_zero_debias_state():
    pytest.importorskip("haiku")
    from bnconform.adapters.jax.haiku import EMA_NAMES, build_params_and_state

    case = _case("formulas/rank4_nchw_eval")
    params, state = build_params_and_state(case, jax_device("cpu"))
    assert params["batch_norm"]["scale"].shape == (1, case.channels, 1, 1)
    mean_ema = state[EMA_NAMES[0]]
    np.testing.assert_array_equal(np.asarray(mean_ema["average"]).reshape(-1), case.initial_state.running_mean)
    assert not np.asarray(mean_ema["hidden"]).any() and int(mean_ema["counter"]) == 0


def test_equinox_moves_a_channels_last_axis_and_back():
    pytest.importorskip("equinox")
    from bnconform.adapters.jax.equinox import EquinoxBatchModeAdapter

    case = _case("formulas/rank4_nhwc_eval")
    verdict = judge(EquinoxBatchModeAdapter(), case, "cpu")
    assert verdict.status == "pass", verdict.detail


def test_equinox_batch_mode_is_the_zero_debias_convention():
    pytest.importorskip("equinox")
    from bnconform.adapters.jax.equinox import EquinoxBatchModeAdapter

    adapter = EquinoxBatchModeAdapter()
    debiased = judge(adapter, _case("momentum/zero_debias_decay_0.9_biased"), "cpu")
    assert debiased.status == "pass", debiased.detail
    plain = judge(adapter, _case("momentum/decay_0.9_biased_3steps"), "cpu")
    assert plain.status == "unsupported" and "always uses zero-debiased" in plain.detail


def test_equinox_ema_blended_training_normalization_is_a_defect():
    pytest.importorskip("equinox")
    from bnconform.adapters.jax.equinox import EquinoxEmaAdapter

    adapter = EquinoxEmaAdapter()
    verdict = judge(adapter, _case("momentum/decay_0.9_biased_3steps"), "cpu")
    assert verdict.status == "deviation", verdict.detail
    assert verdict.deviations == ["equinox-ema-blended-training-normalization"] and verdict.kinds == ["defect"]
    # decay 0: the blend is the batch statistics, nothing is declared and the case passes
    assert judge(adapter, _case("momentum/decay_0_biased_3steps"), "cpu").status == "pass"


def test_equinox_defaults_are_the_installed_layer_defaults():
    pytest.importorskip("equinox")
    import warnings

    from bnconform.adapters.jax.equinox import EquinoxEmaAdapter, load_equinox

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the unspecified-mode warning
        layer = load_equinox().nn.BatchNorm(3, axis_name="batch")
    assert EquinoxEmaAdapter().framework_defaults() == {"decay_parameter": layer.momentum, "epsilon": layer.eps}


def _zero_debias_twin(spec_id: str):
    """The case of ``spec_id`` with zero-debiasing on: the same seed, inputs, state, steps and id
    (case_in selectors name the data), expected results from the oracle."""
    from dataclasses import replace

    from bnconform.specs import all_specs, build

    spec = next(s for s in all_specs((spec_id.split("/")[0],)) if s.id == spec_id)
    return build(replace(spec, config=spec.config.with_running(zero_debias=True)))


# The matrix has no zero-debias twins of these cases, so haiku's (always zero-debiased) findings
# on them are verified here: each declared deviation must be observed, and nothing else.
HAIKU_TWIN_FINDINGS = [
    ("degenerate/huge_mixed_sign_float32_biased", ["haiku-float32-squares-overflow"], ["precision"]),
    ("degenerate/float16_near_overflow_biased", ["haiku-float16-squares-overflow", "haiku-half-precision-moments"],
     ["precision", "dtype"]),
    ("formulas/bfloat16_nchw_train_biased", ["haiku-half-precision-moments"], ["dtype"]),
    ("degenerate/cancellation_float32_1e4_biased",
     ["haiku-one-pass-variance-cancellation", "haiku-unclamped-negative-variance"], ["defect", "precision"]),
    ("degenerate/large_constant_channel_biased", ["haiku-unclamped-negative-variance"], ["defect"]),
    ("degenerate/constant_channel_eps_1e-5_biased", [], []),  # an exact square: the one-pass variance is 0
]


@pytest.mark.parametrize("spec_id, names, kinds", HAIKU_TWIN_FINDINGS)
def test_haiku_findings_on_zero_debias_twins(spec_id, names, kinds):
    pytest.importorskip("haiku")
    from bnconform.adapters.jax.haiku import HaikuAdapter

    verdict = judge(HaikuAdapter(), _zero_debias_twin(spec_id), "cpu")
    assert verdict.status == ("deviation" if names else "pass"), verdict.detail
    assert sorted(verdict.deviations) == sorted(names) and verdict.kinds == kinds
