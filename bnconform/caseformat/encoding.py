"""Bit-exact, language-neutral encoding of float arrays in case files.

An array is ``{"dtype": "float32", "shape": [2, 3], "hex": [...], "approx": [...]}``:

* ``hex`` is authoritative: the flat row-major values, each the C99 / IEEE 754 hexadecimal
  form of the value widened to float64 (``"0x1.8p+0"``, ``"-0x0.0p+0"``), or one of the
  strings ``"nan"``, ``"inf"``, ``"-inf"``. Every float16, bfloat16 and float32 value is
  exactly representable in float64, so narrowing the parsed float64 back to ``dtype``
  reproduces the stored bits (NaN payloads excepted). C's ``strtod`` and Python's
  ``float.fromhex`` both read this form.
* ``approx`` is the same values to 6 significant digits, for humans; readers ignore it.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .dtypes import numpy_dtype


class EncodingError(ValueError):
    """A stored array does not decode; the message says which field and why."""


def _hex(value: float) -> str:
    if math.isnan(value):
        return "nan"
    return float(value).hex()  # gives "inf" / "-inf" for infinities


def _approx(value: float):
    if math.isnan(value) or math.isinf(value):
        return _hex(value)
    return float(f"{value:.6g}")


def encode_array(array, dtype: str) -> dict:
    """Encode ``array`` (already holding values of ``dtype``) for a case file."""
    values = np.asarray(array).astype(numpy_dtype(dtype)).astype(np.float64)
    flat = values.reshape(-1).tolist()
    return {
        "dtype": dtype,
        "shape": list(values.shape),
        "hex": [_hex(v) for v in flat],
        "approx": [_approx(v) for v in flat],
    }


def _parse(text, where: str, index: int) -> float:
    if not isinstance(text, str):
        raise EncodingError(f"{where}/hex/{index}: Expected: a hex float string. Received: {text!r}")
    try:
        return float.fromhex(text)
    except OverflowError:  # e.g. "0x1p+2000": beyond float64, so no dtype can hold it
        raise EncodingError(f"{where}/hex/{index}: Expected: a value within float64 range. Received: {text!r}") from None
    except ValueError:
        raise EncodingError(
            f"{where}/hex/{index}: Expected: a hex float like '0x1.8p+0', 'nan', 'inf'. "
            f"Received: {text!r}"
        ) from None


@functools.lru_cache(maxsize=None)
def _numpy_dtype(name: str) -> np.dtype:
    """numpy_dtype, once per name (it imports ml_dtypes for bfloat16)."""
    return numpy_dtype(name)


def _parse_all(texts, where: str) -> list[float]:
    """Every hex string as a float: one C-level map for a valid array; item by item only to name
    the first bad one."""
    if type(texts) is list and all(type(t) is str for t in texts):
        try:
            return list(map(float.fromhex, texts))
        except (ValueError, OverflowError):
            pass
    return [_parse(t, where, i) for i, t in enumerate(texts)]


def decode_array(obj, where: str = "") -> np.ndarray:
    """Decode an encoded array to NumPy in its stored dtype; raises EncodingError."""
    if not isinstance(obj, dict) or not {"dtype", "shape", "hex"} <= obj.keys():
        raise EncodingError(f"{where}: Expected: an object with dtype, shape, hex. Received: {obj!r:.60}")
    try:
        dtype = _numpy_dtype(obj["dtype"]) if isinstance(obj["dtype"], str) else numpy_dtype(obj["dtype"])
    except ValueError as exc:
        raise EncodingError(f"{where}/dtype: {exc}") from None
    shape = obj["shape"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise EncodingError(f"{where}/shape: Expected: a list of non-negative integers. Received: {shape!r}")
    values = _parse_all(obj["hex"], where)
    if len(values) != math.prod(shape):
        raise EncodingError(
            f"{where}/hex: Expected: {math.prod(shape)} values for shape {shape}. Received: {len(values)}"
        )
    wide = np.array(values, dtype=np.float64).reshape(shape)
    if dtype == np.float64:
        return wide  # every parsed value is a float64: nothing to narrow or check
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below, not warned
        narrow = wide.astype(dtype)
    exact = (narrow == wide) | np.isnan(wide)  # the comparison widens narrow exactly
    if not exact.all():
        bad = int(np.flatnonzero(~exact.reshape(-1))[0])
        raise EncodingError(f"{where}/hex/{bad}: Expected: a value exactly representable in {obj['dtype']}. "
                            f"Received: {obj['hex'][bad]!r}")
    return narrow
