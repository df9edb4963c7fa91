"""Fast checks of the PaddlePaddle adapters' translation (skipped when paddle is not installed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import in_framework_process, requires

pytestmark = [requires("paddle"), *in_framework_process("paddle")]

from bnconform.interfaces import port  # noqa: E402
from bnconform.adapters.paddle.common import data_format, paddle  # noqa: E402
from bnconform.adapters.paddle.functional import PaddleFunctionalAdapter, PaddleGlobalStatsAdapter  # noqa: E402
from bnconform.adapters.paddle.nn import PaddleLayerAdapter  # noqa: E402
from bnconform.judging.judge import judge  # noqa: E402
from bnconform.caseformat.validation import load_case  # noqa: E402

CASES = Path(__file__).resolve().parent.parent / "cases"
ROWS = [PaddleLayerAdapter, PaddleFunctionalAdapter]


def _case(name: str):
    return load_case(CASES / f"{name}.json")


@pytest.mark.parametrize("adapter_class", ROWS)
def test_momentum_is_the_decay_itself(adapter_class):
    # decay 0.99 over three updates: passing torch's 1 - decay (0.01) would move the running
    # statistics almost all the way to the batch and fail the case
    verdict = judge(adapter_class(), _case("momentum/decay_0.99_biased_3steps"), "cpu")
    assert verdict.status == "pass", verdict.detail
    assert "running_var" in verdict.compared
    assert adapter_class.decay_parameter == ("momentum", "old")
    # Paddle's documented defaults (BatchNorm2D and F.batch_norm: momentum=0.9, epsilon=1e-05)
    assert adapter_class().framework_defaults() == {"decay_parameter": 0.9, "epsilon": 1e-5}


def test_port_from_torch_flips_the_momentum():
    torch_side = port.Side("torch.nn", ("momentum", "new"), {"decay_parameter": 0.1, "epsilon": 1e-5})
    paddle_side = port.Side("paddle.nn", PaddleLayerAdapter.decay_parameter, PaddleLayerAdapter().framework_defaults())
    lines = port.ema_lines(torch_side, paddle_side)
    assert "paddle.nn momentum = 1 - torch.nn momentum" in lines[0]
    assert "torch.nn momentum=0.1 (weight on the new batch) -> paddle.nn momentum=0.9" in lines[1]


@pytest.mark.parametrize("name, expected", [
    ("formulas/rank2_nc_train_biased", ("NC", None)),
    ("formulas/rank2_channel_axis0_train_biased", ("NC", 0)),
    ("formulas/rank3_nlc_train_biased", ("NLC", None)),
    ("formulas/rank4_nhwc_train_biased", ("NHWC", None)),
    ("formulas/rank4_channel_axis2_train_biased", ("NCHW", 2)),
    ("formulas/rank5_ndhwc_train_biased", ("NDHWC", None)),
])
def test_channels_last_is_a_data_format_and_other_axes_move(name, expected):
    case = _case(name)
    assert data_format(case) == expected
    for adapter_class in ROWS:
        assert judge(adapter_class(), case, "cpu").status == "pass"


@pytest.mark.parametrize("name", ["formulas/scale_off_center_on_train_biased", "formulas/scale_on_center_off_eval"])
def test_scale_and_center_switch_separately(name):
    for adapter_class in ROWS:
        assert judge(adapter_class(), _case(name), "cpu").status == "pass"


def test_one_parameter_gradient_is_not_expressible():
    """With only one of weight / bias, Paddle's gradient kernel computes neither (d_scale && d_bias):
    paddle.grad returns None for the bias. When that changes, the capability should too."""
    F = paddle().nn.functional
    x = paddle().to_tensor(np.arange(6.0, dtype=np.float32).reshape(3, 2), stop_gradient=False)
    bias = paddle().to_tensor(np.zeros(2, np.float32), stop_gradient=False)
    y = F.batch_norm(x, paddle().zeros([2]), paddle().ones([2]), None, bias, training=True)
    dx, dbeta = paddle().grad([y], [x, bias], grad_outputs=[paddle().ones_like(y)])
    assert dx is not None and dbeta is None
    verdict = judge(PaddleLayerAdapter(), _case("gradients/scale_off_center_on_train_biased"), "cpu")
    assert verdict.status == "unsupported" and "gradients" in verdict.detail
    assert judge(PaddleLayerAdapter(), _case("gradients/scale_off_center_off_train_biased"), "cpu").status == "pass"


def test_layer_cache_is_reset_and_default_dtype_restored():
    adapter, case = PaddleLayerAdapter(), _case("formulas/float64_nchw_train_biased")
    first, second = adapter.run(case, "cpu"), adapter.run(case, "cpu")
    assert len(adapter._layers) == 1
    np.testing.assert_array_equal(first[-1]["running_var"], second[-1]["running_var"])
    assert first[0]["y"].dtype == np.float64 and first[0]["running_mean"].dtype == np.float64
    assert paddle().get_default_dtype() == "float32"


def test_eval_batch_statistics_gradient_is_the_running_one():
    """nn.BatchNorm1D(use_global_stats=False) under eval(): y from the batch, dx as if from the
    (just updated) running statistics -- the layer makes the call the use_global_stats row makes."""
    rng = np.random.default_rng(0)
    x_np, dy_np = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    previous = paddle().get_default_dtype()
    paddle().set_default_dtype("float64")
    try:
        layer = paddle().nn.BatchNorm1D(3, use_global_stats=False)
    finally:
        paddle().set_default_dtype(previous)
    layer.eval()
    x = paddle().to_tensor(x_np, stop_gradient=False)
    y = layer(x)
    (dx,) = paddle().grad([y], [x], grad_outputs=[paddle().to_tensor(dy_np)])
    mean, var = x_np.mean(0), x_np.var(0)
    np.testing.assert_allclose(y.numpy(), (x_np - mean) / np.sqrt(var + 1e-5), rtol=1e-6)
    np.testing.assert_allclose(layer._variance.numpy(), 0.9 + 0.1 * var, rtol=1e-6)
    np.testing.assert_allclose(dx.numpy(), dy_np / np.sqrt(layer._variance.numpy() + 1e-5), rtol=1e-6)
    verdict = judge(PaddleGlobalStatsAdapter(), _case("gradients/rank2_nc_train_biased"), "cpu")
    assert verdict.status == "deviation" and verdict.deviations == ["eval-batch-stats-gradient-uses-running-stats"]
    assert judge(PaddleFunctionalAdapter(), _case("gradients/rank2_nc_train_biased"), "cpu").status == "pass"
