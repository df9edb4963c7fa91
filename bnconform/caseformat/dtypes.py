"""The dtypes a case may use, by their canonical names.

bfloat16 comes from ml_dtypes, which is a small NumPy extension, not an ML framework.
"""

from __future__ import annotations

import numpy as np

DTYPE_NAMES = ("float64", "float32", "float16", "bfloat16")
HALF_DTYPES = ("float16", "bfloat16")


def numpy_dtype(name: str) -> np.dtype:
    """The NumPy dtype for a canonical dtype name (bfloat16 via ml_dtypes)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    if name not in DTYPE_NAMES:
        raise ValueError(f"Expected: one of {', '.join(DTYPE_NAMES)}. Received: {name!r}")
    return np.dtype(name)


def dtype_name(dtype) -> str:
    """The canonical name of a NumPy dtype (inverse of :func:`numpy_dtype`)."""
    name = np.dtype(dtype).name
    if name not in DTYPE_NAMES:
        raise ValueError(f"Expected: one of {', '.join(DTYPE_NAMES)}. Received dtype {name!r}")
    return name


def machine_epsilon(name: str) -> float:
    """Distance from 1.0 to the next representable value of the dtype."""
    if name == "bfloat16":
        import ml_dtypes

        return float(ml_dtypes.finfo(ml_dtypes.bfloat16).eps)
    return float(np.finfo(numpy_dtype(name)).eps)


def compute_dtype(name: str) -> str:
    """The dtype frameworks accumulate in: half inputs are computed in float32."""
    return "float32" if name in HALF_DTYPES else name


def quantize(values, name: str) -> np.ndarray:
    """Round float64 values to the dtype (round-to-nearest-even), as a framework receives them."""
    return np.asarray(values, dtype=np.float64).astype(numpy_dtype(name))
