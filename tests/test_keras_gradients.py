"""Gradient plumbing of the Keras adapters: tf_keras (fused, non-fused, auto, backend functions) and
Keras 3 on its three backends. Expected numbers come from the case files or the float64 oracle,
never from the code under test; each "it differentiates X" test has a control showing the check
can fail.

tf_keras and Keras 3 on TensorFlow run in this process, in the "tensorflow" xdist group, under the
TensorFlow host's environment (Keras 3 reads KERAS_BACKEND once per process, at its first import,
which tf_keras triggers). Keras 3 on torch and on JAX cannot run here. Their gradient cases run in
the matrix (cases/gradients, in the torch and JAX hosts); the one thing no case checks, that the
JAX adapter's jitted VJP program follows each case's momentum on a reused layer, runs in ONE
subprocess (~2-3 s CPU, mostly importing JAX and Keras), ungrouped so that it does not lengthen
the TensorFlow worker. The torch backend has no such state: torch.autograd.grad per call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import in_framework_process, requires

from bnconform.adapters.keras3 import Keras3JaxAdapter, Keras3TensorflowAdapter, Keras3TorchAdapter
from bnconform.adapters.tensorflow.keras import (TfKerasAutoAdapter, TfKerasBackendAdapter, TfKerasFusedAdapter,
                                                 TfKerasNonFusedAdapter)
from bnconform.judging.capabilities import unsupported_reason
from bnconform.judging.compare import compare_case
from bnconform.judging.judge import judge
from bnconform.caseformat.model import Config, Renorm, RunningStats
from bnconform.specs import EVAL, TRAIN, Spec, build
from bnconform.caseformat.validation import load_case

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "cases" / "gradients"


def _in_tensorflow_worker(*modules):
    """Marks of a test that imports TensorFlow here: the TensorFlow test process, skip when a module
    is missing (without importing it)."""
    marks = (*in_framework_process("tensorflow"), requires("tensorflow", *modules))

    def mark(test):
        for one in marks:
            test = one(test)
        return test
    return mark


TF_KERAS = _in_tensorflow_worker("tf_keras")
KERAS3_TF = _in_tensorflow_worker("keras")
GRADIENT_KEYS = {"dx", "dgamma", "dbeta"}
ALL = (TfKerasAutoAdapter, TfKerasFusedAdapter, TfKerasNonFusedAdapter, TfKerasBackendAdapter,
       Keras3TensorflowAdapter, Keras3JaxAdapter, Keras3TorchAdapter)
_ADAPTERS = {}  # one instance per class: built layers are reused across tests


def _adapter(cls):
    return _ADAPTERS.setdefault(cls, cls())


def _case(name: str):
    return load_case(CASES / f"{name}.json")


def _biased(name, shape, steps=(TRAIN,), dy=lambda rng, shape, i: rng.normal(size=shape), **config):
    """An ad hoc gradient case with a biased running variance (what non-fused tf_keras and Keras 3 keep)."""
    cfg = Config(channel_axis=1, running_stats=RunningStats(variance="biased"), **config)
    return build(Spec("gradients", name, "ad hoc", cfg, [shape], steps=steps, make_dy=dy))


def test_no_gradient_case_is_unsupported_for_its_gradients():
    """Every Keras adapter differentiates both step kinds: what still makes a gradient case
    unsupported is a forward knob (a rank, a convention), never the upstream dy."""
    cases = [load_case(path) for path in sorted(CASES.glob("*.json"))]
    for cls in ALL:
        assert cls.capabilities.gradients == {"batch", "running"}, cls.name
        for case in cases:
            reason = unsupported_reason(cls.capabilities, case, "cpu", cls.name) or ""
            assert "gradients" not in reason, (cls.name, case.id, reason)


@TF_KERAS
@pytest.mark.parametrize("cls, name", [
    (TfKerasAutoAdapter, "rank4_nhwc_train"),  # fused kernel (Bessel running variance)
    (TfKerasAutoAdapter, "bfloat16_eval"),
    (TfKerasFusedAdapter, "rank4_nchw_eval"),
    (TfKerasFusedAdapter, "float16_train"),
    (TfKerasNonFusedAdapter, "train_train_eval_biased"),  # the third step's dx uses the updated statistics
    (TfKerasBackendAdapter, "rank2_nc_train"),
    (TfKerasBackendAdapter, "rank4_nhwc_eval"),  # batch_normalization -> fused_batch_norm, inference
], ids=lambda v: getattr(v, "name", v))
def test_tf_keras_gradient_cases_pass_with_every_gradient_compared(cls, name):
    verdict = judge(_adapter(cls), _case(name), "cpu")
    assert verdict.status == "pass", verdict.detail
    assert GRADIENT_KEYS <= set(verdict.compared)


@TF_KERAS
def test_ghost_batch_gradients_flatten_the_layers_broadcast_parameters():
    case = _biased("ghost", (8, 3), virtual_batch_size=4, ghost_split="interleaved")
    verdict = judge(_adapter(TfKerasNonFusedAdapter), case, "cpu")
    assert verdict.status == "pass", verdict.detail
    assert GRADIENT_KEYS <= set(verdict.compared)


def _gradient_op_types(adapter_class, case) -> set[str]:
    """Op types of the tape's gradient of a freshly built layer for ``case``, traced once."""
    import tensorflow as tf

    layer, step = adapter_class()._layer(case, "cpu"), case.steps[0]

    def vjp(x, dy):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=step.is_training)
        return tape.gradient(y, [x, layer.gamma, layer.beta], output_gradients=dy)

    spec = tf.TensorSpec(step.x.shape, tf.float32)
    graph = tf.function(vjp, autograph=False).get_concrete_function(spec, spec).graph
    return {op.type for op in graph.get_operations()}


@TF_KERAS
@pytest.mark.parametrize("name", ["rank4_nhwc_train", "rank4_nhwc_eval"])
def test_the_fused_path_differentiates_with_the_fused_gradient_kernel(name):
    """fused=True: FusedBatchNormGradV3, the kernel's own backward; fused=False: op-by-op gradients."""
    case = _case(name)
    assert "FusedBatchNormGradV3" in _gradient_op_types(TfKerasFusedAdapter, case)
    assert "FusedBatchNormGradV3" not in _gradient_op_types(TfKerasNonFusedAdapter, case)


@TF_KERAS
def test_renorm_gradient_treats_r_and_d_as_constants(monkeypatch):
    """tf_keras wraps r and d in tf.stop_gradient, as the model does; without it dx differs (the
    case can tell)."""
    import tf_keras.src.layers.normalization.batch_normalization as bn

    case = _biased("renorm", (6, 3), renorm=Renorm(rmin=0.8, rmax=1.2, dmax=0.3))
    adapter = TfKerasNonFusedAdapter()
    assert judge(adapter, case, "cpu").status == "pass"
    monkeypatch.setattr(bn.tf, "stop_gradient", lambda value, name=None: value)
    mismatched = {m.output for m in compare_case(case, adapter.run(case, "cpu"))[0]}
    assert mismatched == {"dx"}


@TF_KERAS
def test_forward_only_steps_run_no_tape(monkeypatch):
    """Only a step with dy opens a GradientTape; a step without one returns no gradients."""
    import tensorflow as tf

    case = _biased("dy_on_eval_only", (4, 3), steps=(TRAIN, EVAL),
                   dy=lambda rng, shape, i: rng.normal(size=shape) if i == 1 else None)
    adapter = TfKerasNonFusedAdapter()
    results = adapter.run(case, "cpu")
    assert not GRADIENT_KEYS & set(results[0]) and GRADIENT_KEYS <= set(results[1])
    assert judge(adapter, case, "cpu").status == "pass"

    class NoTape:
        def __init__(self, *args, **kwargs):
            raise AssertionError("a GradientTape was opened")

    monkeypatch.setattr(tf, "GradientTape", NoTape)
    forward_only = _biased("forward_only", (4, 3), dy=lambda rng, shape, i: None)
    for cls in (TfKerasNonFusedAdapter, TfKerasBackendAdapter):
        cls().run(forward_only, "cpu")
    with pytest.raises(AssertionError, match="GradientTape"):
        adapter.run(case, "cpu")


def _frozen_results(layer, params, case) -> list[dict]:
    """One step called with training=True on a layer made trainable=False, its VJP by the tape."""
    from bnconform.adapters.tensorflow.common import to_numpy, to_tensor
    from bnconform.adapters.tensorflow.keras_common import tape_vjp

    step = case.steps[0]
    y, grads = tape_vjp(lambda x: layer(x, training=True), to_tensor(step.x, case.config.input_dtype), params, step.dy)
    stats = [to_numpy(layer.moving_mean).reshape(-1), to_numpy(layer.moving_variance).reshape(-1)]
    return [{"y": to_numpy(y), "running_mean": stats[0], "running_var": stats[1], **grads}]


def _tf_keras_layer(cls, case, trainable: bool):
    from bnconform.adapters.tensorflow.keras import _assign_state

    layer = cls()._layer(case, "cpu")
    layer.epsilon, layer.trainable = case.config.effective_epsilon, trainable
    _assign_state(layer, case)
    return layer, {"dgamma": layer.gamma, "dbeta": layer.beta}


def _keras3_layer(cls, case, trainable: bool):
    adapter = cls()
    layer = adapter._layer(case, "cpu")
    layer.epsilon, layer.trainable = case.config.effective_epsilon, trainable
    adapter._assign_state(layer, case)
    return layer, {"dgamma": layer.gamma.value, "dbeta": layer.beta.value}


FROZEN = [(TfKerasAutoAdapter, _tf_keras_layer), (TfKerasFusedAdapter, _tf_keras_layer),
          (TfKerasNonFusedAdapter, _tf_keras_layer), (Keras3TensorflowAdapter, _keras3_layer)]


@_in_tensorflow_worker("tf_keras", "keras")
@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
@pytest.mark.parametrize("cls, make_layer", FROZEN, ids=lambda v: getattr(v, "name", ""))
def test_a_frozen_layer_called_in_training_has_the_inference_gradient(cls, make_layer):
    """trainable=False + training=True (fine-tuning a frozen layer) gives the running-statistics y,
    dx, dgamma, dbeta and no update; the same call on a trainable layer does not (control)."""
    case = _case("rank4_nhwc_eval")  # 4-D channels last: the fused kernel where the layer may take it
    frozen = _frozen_results(*make_layer(cls, case, trainable=False), case)
    assert not compare_case(case, frozen)[0]
    trainable = _frozen_results(*make_layer(cls, case, trainable=True), case)
    assert {"dx", "running_mean"} <= {m.output for m in compare_case(case, trainable)[0]}


@KERAS3_TF
@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
@pytest.mark.parametrize("name", ["rank2_nc_eval", "bfloat16_eval", "train_train_eval_biased"])
def test_keras3_tensorflow_gradient_cases_pass(name):
    verdict = judge(_adapter(Keras3TensorflowAdapter), _case(name), "cpu")
    assert verdict.status == "pass", verdict.detail
    assert GRADIENT_KEYS <= set(verdict.compared)


# --- Keras 3 on JAX: one subprocess ---------------------------------------------------------------

_JAX_SCRIPT = r"""
import json, sys
from pathlib import Path
from bnconform.reference import oracle
from bnconform.adapters.base import variant
from bnconform.adapters.keras3 import Keras3JaxAdapter
from bnconform.judging.compare import compare_case
from bnconform.caseformat.validation import load_case

adapter = Keras3JaxAdapter()
reason = adapter.unavailable_reason()
if reason:
    print(json.dumps({"unavailable": reason}))
    sys.exit(0)
outputs = lambda case, results, expected=None: [m.output for m in compare_case(case, results, expected)[0]]
# One layer and mode, three runs: the case's momentum, another, the case's again. A program keyed
# without momentum would replay the first trace's; the control shows the momenta are told apart.
original = load_case(Path("cases/gradients/train_train_eval_biased.json"))
other = variant(original, running_stats={"decay": 0.5})
first = adapter.run(original, "cpu")
report = {"first": outputs(original, first), "other": outputs(other, adapter.run(other, "cpu"), oracle.run_case(other)),
          "back": outputs(original, adapter.run(original, "cpu")),
          "control": outputs(other, first, oracle.run_case(other)),
          "layers": len(adapter._layers), "programs": len(adapter._programs),
          "gradients": sorted(set(first[0]) & {"dx", "dgamma", "dbeta"})}
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def jax_report():
    pytest.importorskip("jax")
    from bnconform.execution.controller import compile_cache_environment

    # the JAX host's environment: x64, and the persistent compilation cache (the user's settings win)
    env = {**compile_cache_environment(), **os.environ, **Keras3JaxAdapter.environment}
    done = subprocess.run([sys.executable, "-c", _JAX_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    if "unavailable" in report:
        pytest.skip(report["unavailable"])
    return report


@requires("keras", "jax")
def test_keras3_jax_vjp_program_follows_each_cases_momentum_on_a_reused_layer(jax_report):
    """call() reads momentum and epsilon as Python floats, so a jitted trace bakes them in: the
    adapter keys its programs by them. Every run must match the oracle at its own momentum."""
    assert jax_report["gradients"] == ["dbeta", "dgamma", "dx"]
    assert jax_report["first"] == [] and jax_report["other"] == [] and jax_report["back"] == []
    assert "running_mean" in jax_report["control"]
    assert jax_report["layers"] == 1 and jax_report["programs"] == 4  # (training, inference) x two momenta
