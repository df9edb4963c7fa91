"""Fast checks of the Keras adapters (tf_keras and Keras 3): capability data, selectors, layer reuse.

The capability and selector tests are pure Python (no framework import); the layer tests import
tf_keras, and Keras 3 on its tensorflow backend, in this process, under the TensorFlow host's
environment (KERAS_BACKEND is read once per process). The module shares the "tensorflow" xdist
group with test_tf_adapters, so one worker imports TensorFlow for both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import in_framework_process

from bnconform.adapters.keras3 import Keras3JaxAdapter, Keras3TensorflowAdapter, Keras3TorchAdapter
from bnconform.adapters.tensorflow.keras import (TfKerasAutoAdapter, TfKerasBackendAdapter, TfKerasFusedAdapter,
                                                 TfKerasNonFusedAdapter)
from bnconform.judging.capabilities import unsupported_reason
from bnconform.judging.judge import cannot_express
from bnconform.judging.selectors import Selector
from bnconform.caseformat.validation import load_case
from bnconform.judging.verdict import DEVIATION_KINDS

pytestmark = in_framework_process("tensorflow")

ROOT = Path(__file__).resolve().parent.parent
ALL = (TfKerasAutoAdapter, TfKerasFusedAdapter, TfKerasNonFusedAdapter, TfKerasBackendAdapter,
       Keras3TensorflowAdapter, Keras3JaxAdapter, Keras3TorchAdapter)


def _case(name: str):
    return load_case(ROOT / "cases" / f"{name}.json")


def _reason(adapter_class, name: str) -> str | None:
    return unsupported_reason(adapter_class.capabilities, _case(name), "cpu", adapter_class.name)


def test_importing_the_adapters_imports_no_framework(fresh_imports):
    assert fresh_imports["keras adapters"]["frameworks"] == [], fresh_imports


def test_fused_path_keeps_a_bessel_running_variance_the_non_fused_path_a_biased_one():
    # rank 4, channels last, float32: fused=None takes the fused kernel (Bessel); fused=False is biased.
    assert "always uses a Bessel-corrected running variance" in _reason(TfKerasAutoAdapter, "formulas/rank4_nhwc_train_biased")
    assert _reason(TfKerasAutoAdapter, "formulas/rank4_nhwc_train") is None
    assert _reason(TfKerasNonFusedAdapter, "formulas/rank4_nhwc_train_biased") is None
    assert "always uses a biased running variance" in _reason(TfKerasNonFusedAdapter, "formulas/rank4_nhwc_train")
    # rank 2 never takes the fused kernel: fused=None is biased there.
    assert _reason(TfKerasAutoAdapter, "formulas/rank2_nc_train_biased") is None
    assert "always uses a biased running variance" in _reason(TfKerasAutoAdapter, "formulas/rank2_nc_train")
    assert "always uses a Bessel-corrected" in _reason(TfKerasFusedAdapter, "formulas/rank4_nchw_train_biased")


def test_fused_true_has_only_the_fused_kernels_ranks_and_dtypes():
    assert "input ranks" in _reason(TfKerasFusedAdapter, "formulas/rank2_nc_train")
    assert "dtypes" in _reason(TfKerasFusedAdapter, "formulas/float64_nhwc_train")
    assert "model extensions" in _reason(TfKerasFusedAdapter, "ghost/interleaved_vbs4_b12_nhwc")


def test_contiguous_ghost_batches_run_only_where_both_splits_agree():
    assert "ghost batch splits" in _reason(TfKerasNonFusedAdapter, "ghost/contiguous_vbs2_b8")
    assert _reason(TfKerasNonFusedAdapter, "ghost/vbs_equals_batch") is None
    assert _reason(TfKerasNonFusedAdapter, "ghost/interleaved_vbs2_b8") is None


def test_keras3_keeps_a_biased_running_variance_and_always_updates_in_training():
    assert _reason(Keras3TorchAdapter, "momentum/decay_0.9_biased_3steps") is None
    assert "always uses a biased running variance" in _reason(Keras3TorchAdapter, "momentum/decay_0.9_bessel_3steps")
    assert "step kinds" in _reason(Keras3TorchAdapter, "momentum/train_without_update_between_biased")


@pytest.mark.parametrize("adapter_class", ALL, ids=lambda c: c.name)
def test_deviations_have_a_kind_and_a_declarative_selector(adapter_class):
    assert adapter_class.deviations
    for deviation in adapter_class.deviations:
        assert deviation.kind in DEVIATION_KINDS and isinstance(deviation.applies, Selector)
        assert "lambda" not in deviation.applies_to and deviation.link.startswith("https://")


def test_float64_momentum_variant_changes_only_the_decay():
    deviation = next(d for d in TfKerasNonFusedAdapter.deviations if d.name == "float64-momentum-rounded-to-float32")
    case = _case("momentum/decay_0.9_float64_biased")
    assert deviation.applies(case, "cpu")
    changed = deviation.behaviour.variant(case).config
    assert changed.running_stats.variance == "biased"
    assert changed.running_stats.decay == pytest.approx(0.9, abs=1e-8) and changed.running_stats.decay != 0.9


def test_overflow_and_empty_batch_selectors_pick_their_cells_only():
    overflow = next(d for d in TfKerasNonFusedAdapter.deviations if d.name == "float32-variance-overflow")
    assert overflow.applies(_case("degenerate/huge_mixed_sign_float32_biased"), "cpu")
    assert not overflow.applies(_case("degenerate/huge_mixed_sign_float64_biased"), "cpu")
    empty = next(d for d in Keras3TorchAdapter.deviations if d.kind == "defect")
    assert empty.applies(_case("degenerate/n0_rank2_train"), "cpu")
    assert not empty.applies(_case("degenerate/n0_rank2_eval"), "cpu")


# --- With the frameworks ----------------------------------------------------------------------------


def test_tf_keras_layer_is_reused_across_decays_and_matches_a_fresh_layer():
    pytest.importorskip("tf_keras")
    first, second = _case("momentum/decay_0.1_biased_3steps"), _case("momentum/decay_0.9_biased_3steps")
    assert first.config.running_stats.decay != second.config.running_stats.decay
    reused = TfKerasNonFusedAdapter()
    reused.run(first, "cpu")
    got = reused.run(second, "cpu")
    assert len(reused._layers) == 1
    fresh = TfKerasNonFusedAdapter().run(second, "cpu")
    for a, b in zip(got, fresh):
        for key in b:
            np.testing.assert_array_equal(a[key], b[key])


def test_tf_keras_framework_defaults_are_the_layers_own():
    tf_keras = pytest.importorskip("tf_keras")
    layer = tf_keras.layers.BatchNormalization()
    assert TfKerasAutoAdapter().framework_defaults() == {"decay_parameter": layer.momentum, "epsilon": layer.epsilon}


# keras' tensorflow backend calls np.array(tensor) without copy=: numpy 2 warns, nothing else changes
@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
def test_keras3_layer_is_reused_across_decays_and_matches_a_fresh_layer():
    """On the tensorflow backend, in this process: tf_keras imports Keras 3 with it here anyway
    (no extra framework import), and the layer reuse is _Keras3Adapter's, the same code on every
    backend (each calls the layer eagerly, reading momentum and epsilon at call time)."""
    pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    first, second = _case("momentum/decay_0.1_biased_3steps"), _case("momentum/decay_0.9_biased_3steps")
    assert first.config.running_stats.decay != second.config.running_stats.decay
    reused = Keras3TensorflowAdapter()
    reused.run(first, "cpu")
    got, fresh = reused.run(second, "cpu"), Keras3TensorflowAdapter().run(second, "cpu")
    assert len(reused._layers) == 1, reused._layers
    for a, b in zip(got, fresh):
        for key in b:
            np.testing.assert_array_equal(a[key], b[key])
    layer = keras.layers.BatchNormalization()
    assert reused.framework_defaults() == {"decay_parameter": layer.momentum, "epsilon": layer.epsilon}


def test_cannot_express_uses_no_framework_for_a_structural_reason():
    assert "input ranks" in cannot_express(TfKerasFusedAdapter(), _case("formulas/rank2_nc_train"), "cpu")
