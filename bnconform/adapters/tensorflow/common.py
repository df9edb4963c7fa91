"""Shared helpers for the TensorFlow adapters (tf.nn, tf.nn+ema, fused, global norm, Keras, slim...).

Stable, small API (other adapters import it):

- ``tf()``                  -> the imported ``tensorflow`` module (imported lazily, once).
- ``tf_devices()``          -> ``["cpu"]`` plus ``"cuda"`` when TensorFlow sees a GPU.
- ``tf_device_scope(dev)``  -> context manager placing ops on ``/CPU:0`` or ``/GPU:0``.
- ``to_tf_dtype(name)``     -> ``tf.DType`` for a canonical dtype name
  (``"float16"``, ``"bfloat16"``, ``"float32"``, ``"float64"``).
- ``to_tensor(array, dtype_name)`` -> constant tensor of that dtype (NumPy / ml_dtypes input).
- ``to_numpy(tensor)``      -> NumPy array (bfloat16 widened to float32, which is exact).

Importing this module does not import TensorFlow.
"""

from __future__ import annotations

import functools
import os

import numpy as np

_DEVICE_NAMES = {"cpu": "/CPU:0", "cuda": "/GPU:0"}


@functools.lru_cache(maxsize=None)
def tf():
    """The ``tensorflow`` module, imported on first use (quietly: no C++ info logs)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow

    return tensorflow


@functools.lru_cache(maxsize=None)
def tf_devices() -> list[str]:
    """``["cpu"]`` plus ``"cuda"`` when ``tf.config.list_physical_devices('GPU')`` is non-empty."""
    return ["cpu", "cuda"] if tf().config.list_physical_devices("GPU") else ["cpu"]


def tf_device_scope(device: str):
    """A ``tf.device`` context for a bnconform device name ("cpu" or "cuda")."""
    if device not in _DEVICE_NAMES:
        raise ValueError(f"Expected: device in {sorted(_DEVICE_NAMES)}. Received: {device!r}")
    return tf().device(_DEVICE_NAMES[device])


def to_tf_dtype(name: str):
    """The ``tf.DType`` named ``name`` (canonical names equal TensorFlow's)."""
    try:
        return tf().dtypes.as_dtype(str(name))
    except TypeError as exc:
        raise ValueError(f"Expected: a float dtype name such as 'float32'. Received: {name!r}") from exc


def to_tensor(array, dtype_name: str):
    """A constant tensor of dtype ``dtype_name`` holding ``array`` (create it inside a device scope)."""
    return tf().constant(np.asarray(array), dtype=to_tf_dtype(dtype_name))


def to_numpy(tensor) -> np.ndarray:
    """NumPy value of a tensor; bfloat16 becomes float32 (exact) so every consumer can read it."""
    value = np.asarray(tensor.numpy() if hasattr(tensor, "numpy") else tensor)
    if value.dtype.name == "bfloat16":
        value = value.astype(np.float32)
    return value


# --- Helpers shared by the tf.nn-family adapters (tf.nn, tf.nn+ema, fused, global normalization).


def channel_shape(rank: int, channel_axis: int, channels: int) -> list[int]:
    """Shape ``[1, .., C, .., 1]`` that broadcasts a per-channel vector along ``channel_axis``."""
    shape = [1] * rank
    shape[channel_axis] = channels
    return shape


def epsilon_mode_reason(config, api: str) -> str | None:
    """Reason a case is unsupported by an API that adds epsilon inside the sqrt, else None."""
    if config.epsilon_mode != "add_inside_sqrt":
        return (f"{api} adds epsilon inside the square root (rsqrt(var + eps)); "
                f"it has no {config.epsilon_mode} option")
    return None


def extensions_reason(case, api: str) -> str | None:
    """Reason a case using a model extension (renorm, ghost batches, sample weights) is unsupported."""
    used = getattr(case, "extensions", ())
    if used:
        return f"{api} has no {' / '.join(used)} option"
    return None
