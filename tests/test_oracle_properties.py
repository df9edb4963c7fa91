"""Properties the oracle and the array encoding must have for any input (hypothesis).

The expected side uses NumPy's own mean/var on the inputs, or the same oracle call on a
transformed input, never a re-implementation of the oracle's formulas.
"""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bnconform.reference import oracle
from bnconform.caseformat.encoding import decode_array, encode_array
from bnconform.caseformat.model import Config, RunningStats, State, Step

SETTINGS = settings(max_examples=50, deadline=None)

# Moderate, well-conditioned values: a spread of at least 1/8 within |x| <= 1000.
VALUES = st.integers(-8000, 8000).map(lambda k: k / 8.0)


def batches(min_rows=2, max_rows=12, max_channels=4):
    """(N, C) float64 batches whose every channel holds at least two distinct values."""
    shape = st.tuples(st.integers(min_rows, max_rows), st.integers(1, max_channels))
    return shape.flatmap(lambda s: hnp.arrays(np.float64, s, elements=VALUES)).filter(
        lambda x: (np.ptp(x, axis=0) > 0).all())


def identity_state(channels: int, mean=0.0, var=1.0) -> State:
    ones = np.ones(channels)
    return State(ones.copy(), np.zeros(channels), mean * ones, var * ones, 0)


def train(config: Config, xs, state=None) -> list[dict]:
    state = state or identity_state(xs[0].shape[config.channel_axis])
    return oracle.run_steps(config, state, [Step("batch", True, x) for x in xs])


@SETTINGS
@given(x=batches(), eps=st.sampled_from([0.0, 1e-5, 1e-3, 0.1, 1.0]))
def test_train_output_has_zero_mean_and_shrunk_unit_variance(x, eps):
    (out,) = train(Config(channel_axis=1, epsilon=eps), [x])
    var = np.var(x, axis=0)
    np.testing.assert_allclose(np.mean(out["y"], axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(np.var(out["y"], axis=0), var / (var + eps), rtol=1e-9, atol=1e-12)


@SETTINGS
@given(xs=st.lists(batches(max_channels=1), min_size=1, max_size=3), variance=st.sampled_from(["biased", "bessel"]))
def test_decay_zero_makes_running_stats_the_last_batch(xs, variance):
    config = Config(channel_axis=1, running_stats=RunningStats(decay=0.0, variance=variance))
    last, n = xs[-1], xs[-1].shape[0]
    out = train(config, xs, identity_state(1, mean=5.0, var=7.0))[-1]
    np.testing.assert_allclose(out["running_mean"], np.mean(last, axis=0), rtol=1e-12)
    np.testing.assert_allclose(out["running_var"], np.var(last, axis=0, ddof=1 if variance == "bessel" else 0),
                               rtol=1e-12)
    assert out["num_updates"] == len(xs) and n >= 2


@SETTINGS
@given(x=batches(), a=st.floats(1e-2, 1e2), b=st.floats(-1e3, 1e3), channel=st.integers(0, 3),
       eps=st.sampled_from([0.0, 1e-5, 1e-2]))
def test_affine_change_of_one_channel_leaves_its_output_unchanged(x, a, b, channel, eps):
    """(a x + b - mean) / sqrt(a^2 var + a^2 eps) == (x - mean) / sqrt(var + eps): eps scales by a^2."""
    assume(channel < x.shape[1])
    moved = x.copy()
    moved[:, channel] = a * x[:, channel] + b
    (base,) = train(Config(channel_axis=1, epsilon=eps), [x])
    (after,) = train(Config(channel_axis=1, epsilon=eps * a * a), [moved])
    np.testing.assert_allclose(after["y"][:, channel], base["y"][:, channel], rtol=1e-7, atol=1e-7)


@SETTINGS
@given(data=st.data(), x=batches())
def test_permuting_samples_permutes_outputs(data, x):
    order = data.draw(st.permutations(range(x.shape[0])))
    config = Config(channel_axis=1, running_stats=RunningStats(decay=0.5))
    (base,) = train(config, [x])
    (shuffled,) = train(config, [x[list(order)]])
    np.testing.assert_allclose(shuffled["y"], base["y"][list(order)], rtol=1e-12, atol=1e-12)
    for key in ("batch_mean", "batch_var", "running_mean", "running_var"):
        np.testing.assert_allclose(shuffled[key], base[key], rtol=1e-12, atol=1e-12)


# --- encoding ------------------------------------------------------------------------------------

_BITS = {"float64": np.uint64, "float32": np.uint32, "float16": np.uint16, "bfloat16": np.uint16}
_NUMPY = {"float64": np.float64, "float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def _round_trip(values: np.ndarray, dtype: str) -> np.ndarray:
    """Encode, write as JSON text, read back, decode: what a case file does to an array."""
    text = json.dumps(encode_array(values, dtype), allow_nan=False)
    return decode_array(json.loads(text), "/x")


def _assert_same_bits(got: np.ndarray, want: np.ndarray, dtype: str) -> None:
    """Identical bit patterns, except that any NaN may come back as any NaN (payloads are not kept)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    nan = np.isnan(want.astype(np.float64))
    assert (np.isnan(got.astype(np.float64)) == nan).all()
    bits = _BITS[dtype]
    assert (got.view(bits)[~nan] == want.view(bits)[~nan]).all()


@SETTINGS
@given(data=st.data(), dtype=st.sampled_from(list(_BITS)))
def test_encoding_round_trip_is_bit_exact_for_every_bit_pattern(data, dtype):
    """Random bit patterns cover subnormals, -0.0, +-Inf, NaN and the largest finite values."""
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=5))
    bits = data.draw(hnp.arrays(_BITS[dtype], shape))
    values = bits.view(_NUMPY[dtype])
    _assert_same_bits(_round_trip(values, dtype), values, dtype)


def test_encoding_round_trip_special_values():
    for dtype, numpy_type in _NUMPY.items():
        info = ml_dtypes.finfo(numpy_type)
        special = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, float(info.max), -float(info.max),
                            float(info.smallest_subnormal), float(info.tiny), 1.0 + float(info.eps)],
                           dtype=numpy_type)
        got = _round_trip(special, dtype)
        _assert_same_bits(got, special, dtype)
        assert np.signbit(got[3]) and not np.signbit(got[4])  # -0.0 keeps its sign


def test_encoding_writes_c99_hex_and_special_words():
    encoded = encode_array(np.array([1.5, -0.0, np.nan, np.inf, -np.inf], dtype=np.float32), "float32")
    assert encoded["hex"] == ["0x1.8000000000000p+0", "-0x0.0p+0", "nan", "inf", "-inf"]
    assert encoded["shape"] == [5] and encoded["dtype"] == "float32"
