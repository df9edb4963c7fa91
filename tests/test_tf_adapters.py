"""Fast checks of the non-Keras TensorFlow adapters: path-dependent conventions, graph sharing,
and that feeding the decay as a tensor gives the same bits as the Python float it replaces.

Capability checks are pure data. tf.nn+ema runs in this process; tf.v1.layers and tf-slim need
TF_USE_LEGACY_KERAS=1 before TensorFlow is imported, so they run in one subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import in_framework_process, requires

# One worker runs this module and test_keras_adapters ("tensorflow" group): TensorFlow is imported
# once, under the environment of the matrix's TensorFlow host.
pytestmark = [requires("tensorflow"), *in_framework_process("tensorflow")]

from bnconform.adapters.base import variant  # noqa: E402
from bnconform.adapters.tensorflow.ema import TfEmaAdapter  # noqa: E402
from bnconform.adapters.tensorflow.fused import TfFusedBatchNormAdapter  # noqa: E402
from bnconform.adapters.tensorflow.slim import SLIM_CAPABILITIES  # noqa: E402
from bnconform.adapters.tensorflow.v1_layers import V1_CAPABILITIES, TfV1LayersAdapter  # noqa: E402
from bnconform.judging.judge import cannot_express, judge  # noqa: E402
from bnconform.caseformat.validation import load_case  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _case(name: str):
    return load_case(ROOT / "cases" / f"{name}.json")


@pytest.mark.parametrize("name, kind", [
    ("formulas/rank4_nchw_train", "bessel"),  # 4-D float32, axis 1: the fused kernel
    ("formulas/rank3_ncl_train", "biased"),  # rank 3: tf.nn.moments
    ("formulas/float64_nchw_train", "biased"),  # float64 never takes the fused kernel
])
def test_v1_layers_running_variance_follows_the_path(name, kind):
    assert V1_CAPABILITIES.for_case(_case(name), "cpu").running_variance == {kind}


@pytest.mark.parametrize("name, kind", [
    ("formulas/rank2_nc_train", "bessel"),  # slim's own _fused_batch_norm
    ("formulas/rank3_ncl_train", "biased"),
    ("weighted/rank4_nchw", "biased"),  # batch_weights: slim's non-fused code
    ("momentum/decay_0.9_bessel_rank4_nchw_zero_debias", "bessel"),
])
def test_slim_running_variance_follows_the_path(name, kind):
    assert SLIM_CAPABILITIES.for_case(_case(name), "cpu").running_variance == {kind}


def test_biased_case_on_a_fused_path_is_unsupported_with_the_convention():
    reason = cannot_express(TfV1LayersAdapter(), _case("formulas/rank4_nchw_train_biased"), "cpu")
    assert reason.startswith("tf.v1.layers always uses a Bessel-corrected running variance")
    reason = cannot_express(TfFusedBatchNormAdapter(), _case("formulas/rank4_nchw_train_biased"), "cpu")
    assert reason.startswith("tf.fused_batch_norm always uses a Bessel-corrected running variance")
    reason = cannot_express(TfV1LayersAdapter(), _case("formulas/rank3_ncl_train"), "cpu")
    assert reason.startswith("tf.v1.layers always uses a biased running variance")


def test_defaults_are_read_from_the_installed_api():
    assert TfFusedBatchNormAdapter().framework_defaults() == {"decay_parameter": 1.0, "epsilon": 0.001}
    # ExponentialMovingAverage(decay) and tf.nn.batch_normalization(variance_epsilon) have no default.
    assert TfEmaAdapter().framework_defaults() == {"decay_parameter": None, "epsilon": None}


def test_ema_cases_differing_only_in_fed_knobs_share_one_graph():
    adapter = TfEmaAdapter()
    for name in ("momentum/decay_0.9_biased_3steps", "momentum/decay_0.5_biased_3steps"):
        assert judge(adapter, _case(name), "cpu").status == "pass"
    assert len(adapter._graphs) == 1


_SUBPROCESS = r"""
import json, os, sys
import numpy as np
from bnconform.adapters.base import variant
from bnconform.adapters.tensorflow import graph as g, slim, v1_layers
from bnconform.judging.judge import judge
from bnconform.caseformat.validation import load_case

def bits(results):
    return [{k: np.asarray(v).tobytes() for k, v in step.items()} for step in results]

def outputs(module, case, feed):
    return bits(g.run_case(module._build_graph(case, "cpu", feed), case))

report = {}
slim.TfSlimCompatAdapter().unavailable_reason()  # restores the compat aliases
for label, module, adapter, name in [
        ("v1 fused", v1_layers, v1_layers.TfV1LayersAdapter(), "momentum/decay_0.9_bessel_rank4_nchw"),
        ("v1 non-fused", v1_layers, v1_layers.TfV1LayersAdapter(), "momentum/decay_0.9_biased_3steps"),
        ("slim keras fused", slim, slim.TfSlimCompatAdapter(), "momentum/decay_0.9_bessel_rank4_nchw"),
        ("slim own fused", slim, slim.TfSlimCompatAdapter(), "momentum/decay_0.9_bessel_rank4_nchw_zero_debias")]:
    case = load_case(os.path.join("cases", name + ".json"))
    chosen = module._decay_feed(case)
    other = g.DecayFeed("float64" if chosen.dtype == "float32" else "float32")
    builds = g.GraphLayer.builds
    statuses = [judge(adapter, c, "cpu").status for c in (case, variant(case, running_stats={"decay": 0.5}))]
    shared = g.GraphLayer.builds - builds
    baked = outputs(module, case, g.DecayFeed(None, case.config.running_stats.decay))
    report[label] = {"feed": chosen.dtype, "exact": outputs(module, case, chosen) == baked,
                     "other_exact": outputs(module, case, other) == baked,
                     "builds_for_two_decays": shared, "status": statuses[0]}
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def graph_report():
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-c", _SUBPROCESS], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_fed_decay_gives_the_bits_of_the_python_float(graph_report):
    assert {label: row["exact"] for label, row in graph_report.items()} == dict.fromkeys(graph_report, True)
    assert graph_report["v1 fused"]["feed"] == "float32" and graph_report["v1 non-fused"]["feed"] == "float64"
    assert graph_report["slim own fused"]["feed"] == "float64"


def test_the_bitwise_check_can_fail(graph_report):
    """The other feed dtype changes 1 - decay by ~2e-8: some path must show it, or the check above
    proves nothing."""
    assert not all(row["other_exact"] for row in graph_report.values())


def test_layer_graphs_are_shared_across_decays(graph_report):
    for label, row in graph_report.items():
        assert row["builds_for_two_decays"] == 1, label  # the adapter's own graph, shared by both decays
        assert row["status"] in ("pass", "deviation"), label
