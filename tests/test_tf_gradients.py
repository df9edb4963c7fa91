"""Gradient plumbing of the non-Keras TensorFlow adapters: tf.GradientTape in tf.nn, fused and
global normalization, tf.gradients in the TF1 graphs (tf.nn+ema, graph.GraphLayer under
tf.v1.layers and tf-slim). Expected numbers come from the float64 oracle (case expectations) or
closed forms written here, never from the code under test.

tf.v1.layers and tf-slim need TF_USE_LEGACY_KERAS=1 before TensorFlow is imported; their shared
GraphLayer is tested here with a small layer built from tf.nn ops and variables instead, and the
layers themselves run the gradients family in the matrix.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import in_framework_process, requires

pytestmark = [requires("tensorflow"), *in_framework_process("tensorflow")]

from bnconform.adapters.tensorflow import graph as g  # noqa: E402
from bnconform.adapters.tensorflow.common import HALF_INPUT_PARAMETER_GRADIENTS, tf  # noqa: E402
from bnconform.adapters.tensorflow.ema import TfEmaAdapter  # noqa: E402
from bnconform.adapters.tensorflow.fused import TfFusedBatchNormAdapter  # noqa: E402
from bnconform.adapters.tensorflow.global_norm import TfGlobalNormalizationAdapter  # noqa: E402
from bnconform.adapters.tensorflow.nn import TfNnAdapter  # noqa: E402
from bnconform.judging.compare import compare_case  # noqa: E402
from bnconform.judging.judge import judge  # noqa: E402
from bnconform.caseformat.model import Config, RunningStats  # noqa: E402
from bnconform.specs import EVAL, TRAIN, TRAIN_NO_UPDATE, Spec, build  # noqa: E402

_ADAPTERS = {}  # one instance per class: the graph adapters' caches are reused across tests
# What each adapter can run: tf.nn keeps no state, global normalization is inference only.
STEPS = {TfNnAdapter: (TRAIN_NO_UPDATE, EVAL), TfFusedBatchNormAdapter: (TRAIN, EVAL),
         TfGlobalNormalizationAdapter: (EVAL, EVAL), TfEmaAdapter: (TRAIN, EVAL)}
# The running variance each one keeps (a convention: the other kind makes an updating case unsupported).
RUNNING = {TfEmaAdapter: RunningStats(variance="biased")}


def _adapter(cls):
    return _ADAPTERS.setdefault(cls, cls())


def _random_dy(rng, shape, i):
    return rng.normal(size=shape)


def _ad_hoc(name, steps, dy=_random_dy, shape=(4, 3, 2, 2), cls=None, **config):
    config = {"running_stats": RUNNING.get(cls, RunningStats()), **config}
    return build(Spec("gradients", name, "ad hoc", Config(channel_axis=1, **config), [shape], steps=steps, make_dy=dy))


def _forward_only(case):
    return dataclasses.replace(case, steps=[dataclasses.replace(s, dy=None) for s in case.steps])


@pytest.mark.parametrize("cls", list(STEPS))
def test_gradients_match_the_oracle_with_every_gradient_compared(cls):
    verdict = judge(_adapter(cls), _ad_hoc(f"match_{cls.__name__}", STEPS[cls], cls=cls), "cpu")
    assert verdict.status == "pass", verdict.detail
    assert {"dx", "dgamma", "dbeta"} <= set(verdict.compared)


@pytest.mark.parametrize("cls", list(STEPS))
def test_forward_only_steps_return_no_gradients_and_the_same_y(cls):
    """A step without dy reports no gradient keys, and a step with dy reports the y of the very
    call it differentiated: bit for bit the forward-only y."""
    case = _ad_hoc(f"same_y_{cls.__name__}", STEPS[cls], dy=lambda rng, shape, i: rng.normal(size=shape) if i else None,
                   cls=cls)
    with_grads, forward = _adapter(cls).run(case, "cpu"), _adapter(cls).run(_forward_only(case), "cpu")
    assert "dx" not in with_grads[0] and "dx" not in forward[1]
    assert with_grads[1]["dx"].shape == case.steps[1].x.shape
    for got, plain in zip(with_grads, forward):
        np.testing.assert_array_equal(got["y"], plain["y"])


@pytest.mark.parametrize("cls", list(STEPS))
def test_switched_off_parameters_have_no_gradient(cls):
    results = _adapter(cls).run(_ad_hoc(f"off_{cls.__name__}", STEPS[cls], cls=cls, scale=False, center=False), "cpu")
    assert all(r["dgamma"] is None and r["dbeta"] is None and r["dx"] is not None for r in results)


@pytest.mark.parametrize("cls", [TfNnAdapter, TfFusedBatchNormAdapter, TfEmaAdapter])
def test_training_dx_flows_through_the_batch_statistics(cls):
    """dy = 1: training dx = g f (1 - mean(1)) + (...) sum(xc) = 0, while a backward that treated
    mu and var as constants (the inference formula) would give g f = gamma / sqrt(var + eps)."""
    case = _ad_hoc(f"ones_{cls.__name__}", STEPS[cls][:1], dy=lambda rng, shape, i: np.ones(shape), cls=cls)
    dx = _adapter(cls).run(case, "cpu")[0]["dx"]
    constant_statistics = case.initial_state.gamma / np.sqrt(case.steps[0].expected["batch_var"] + 1e-5)
    assert np.abs(dx).max() < 1e-5 * np.abs(constant_statistics).min()


@pytest.mark.parametrize("cls", [TfNnAdapter, TfFusedBatchNormAdapter, TfGlobalNormalizationAdapter, TfEmaAdapter])
def test_inference_dx_is_the_affine_map(cls):
    """Running statistics are constants: dx = gamma / sqrt(running_var + eps) * dy exactly as written."""
    case = _ad_hoc(f"eval_{cls.__name__}", (EVAL,))
    dx = _adapter(cls).run(case, "cpu")[0]["dx"]
    state = case.initial_state
    expected = (state.gamma / np.sqrt(state.running_var.astype(np.float64) + 1e-5)).reshape(1, -1, 1, 1) * case.steps[0].dy
    np.testing.assert_allclose(dx, expected, rtol=1e-5)


def test_ema_adds_gradient_ops_only_for_the_step_kinds_that_ask():
    adapter = _adapter(TfEmaAdapter)
    case = _ad_hoc("ema_lazy", (EVAL,), shape=(5, 7, 2, 2))  # a channel count no other test uses
    before = adapter.run(_forward_only(case), "cpu")
    (graph,) = [v for k, v in adapter._graphs.items() if k[3] == 7]
    operations = len(graph.graph.get_operations())
    assert graph._gradients == {} and graph._gradient_runs == {}
    adapter.run(case, "cpu")
    assert set(graph._gradients) == {False} and set(graph._gradient_runs) == {(False, False)}
    assert len(graph.graph.get_operations()) > operations
    after = adapter.run(_forward_only(case), "cpu")  # forward callables untouched by the new ops
    np.testing.assert_array_equal(before[0]["y"], after[0]["y"])


def _tiny_layer(x, momentum):
    """A BN layer the way the TF1 layers build one: variables named gamma/beta/moving_*, moments,
    update ops in UPDATE_OPS (here a plain assign of the EMA, biased variance)."""
    v1, channels = tf().compat.v1, x.shape[1]
    names = ("gamma", "beta", "moving_mean", "moving_variance")
    gamma, beta, moving_mean, moving_var = (v1.get_variable(n, [channels], tf().float32) for n in names)
    mean, var = tf().nn.moments(x, axes=[0, 2, 3])
    as_4d = lambda v: tf().reshape(v, [1, -1, 1, 1])  # noqa: E731
    y_train = tf().nn.batch_normalization(x, as_4d(mean), as_4d(var), as_4d(beta), as_4d(gamma), 1e-5)
    y_eval = tf().nn.batch_normalization(x, as_4d(moving_mean), as_4d(moving_var), as_4d(beta), as_4d(gamma), 1e-5)
    updates = [moving_mean.assign(momentum * moving_mean + (1 - momentum) * mean),
               moving_var.assign(momentum * moving_var + (1 - momentum) * var)]
    return g.BuiltLayer(y_train, y_eval, updates, g.variables_by_role(v1.global_variables()))


def test_graph_layer_differentiates_the_layer_variables_in_the_same_run():
    """gamma / beta are the layer's variables (not fed tensors), the update runs in the gradient
    run, and the eval step after it normalizes with the updated statistics: all as the oracle says."""
    case = _ad_hoc("graph_layer", (TRAIN, EVAL), running_stats=RunningStats(variance="biased"))
    layer = g.GraphLayer(_tiny_layer, "float32", 4, 1, 3, "cpu", g.DecayFeed(None, 0.9))
    assert layer._gradients == {}  # built on first use only
    results = g.run_case(layer, case)
    mismatches, compared = compare_case(case, results)
    assert not mismatches and {"dx", "dgamma", "dbeta", "running_var"} <= set(compared)
    assert set(layer._gradients) == {True, False}


def test_half_input_parameter_gradient_selector():
    float16 = _ad_hoc("half", (EVAL,), input_dtype="float16")
    assert HALF_INPUT_PARAMETER_GRADIENTS(float16, "cpu")
    assert not HALF_INPUT_PARAMETER_GRADIENTS(_forward_only(float16), "cpu")
    assert not HALF_INPUT_PARAMETER_GRADIENTS(_ad_hoc("half_off", (EVAL,), input_dtype="float16", scale=False,
                                                      center=False), "cpu")
    assert not HALF_INPUT_PARAMETER_GRADIENTS(_ad_hoc("half_params", (EVAL,), input_dtype="float16",
                                                      param_dtype="float16"), "cpu")


def test_half_input_parameter_gradients_are_a_declared_deviation_only_there():
    """tf.nn reduces dgamma / dbeta of a float16 input in float16 (declared); dx matches, and the
    same case in float32 passes, so the declaration does not hide a wrong dx."""
    adapter = _adapter(TfNnAdapter)
    half = judge(adapter, _ad_hoc("half_nn", (EVAL,), input_dtype="float16", shape=(16, 3, 4, 4)), "cpu")
    assert half.status == "deviation", half.detail
    assert {m["output"] for m in half.mismatches} <= {"dgamma", "dbeta"}
    single = judge(adapter, _ad_hoc("single_nn", (EVAL,), shape=(16, 3, 4, 4)), "cpu")
    assert single.status == "pass", single.detail
