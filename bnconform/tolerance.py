"""The tolerance policy: how far a framework's result may be from the float64 oracle.

A value passes when ``|got - expected| <= atol + rtol * |expected|`` and NaN positions match
exactly (infinities must match by sign). For each output of each step the generator writes::

    rtol = K * u(dtype)
    atol = rtol * scale + (y only) 8 * u(compute) * max|gamma| * max_c(|mu_c| / sigma_c)

* ``u(dtype)`` is the machine epsilon of the dtype the framework returns: the input dtype for y
  and batch moments, the param dtype for running statistics.
* ``K`` is 256 when the framework computes in that dtype (float32, float64: room for
  accumulation order), 4 when a half-precision result is rounded from float32 arithmetic.
* ``scale`` is the largest finite ``|expected|`` of that output in the step (1 if none), so the
  tolerance follows the output's own magnitude (inputs span 1e-3 ... 1e3).
* The y term covers the one rounding no implementation can avoid: the batch mean rounded to
  the compute dtype, amplified by ``|mu| / sigma`` (large offset, small spread).
* Extensions (see :func:`bnconform.oracle.run_steps_traced`): with ghost batches mu / sigma
  runs over every ghost batch and channel; with sample weights (mu, sigma) are the weighted
  moments; with renorm gamma is scaled by ``max_c(r_c + sigma_B,c / max(s_R,c, sqrt(eps)))``,
  because a rounded mean moves ``xhat * r`` by r / sigma_B and ``d`` by 1 / s_R.

Nothing here depends on any framework; the runner never widens what the case file says.
"""

from __future__ import annotations

import numpy as np

from .dtypes import HALF_DTYPES, compute_dtype, machine_epsilon
from .model import Config

_BATCH_OUTPUTS = ("y", "batch_mean", "batch_var")


def _rtol(dtype: str) -> float:
    return (4.0 if dtype in HALF_DTYPES else 256.0) * machine_epsilon(dtype)


def _scale(values: np.ndarray) -> float:
    finite = np.abs(values[np.isfinite(values)])
    return float(finite.max()) if finite.size and finite.max() > 0 else 1.0


def _offset_ratio(mean, var, config: Config) -> float:
    """max_c |mu_c| / sigma_c over channels with finite, positive spread."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.abs(mean) / np.sqrt(var + config.effective_epsilon)
    ratio = ratio[np.isfinite(ratio)]
    return float(ratio.max()) if ratio.size else 0.0


def step_tolerance(config: Config, expected: dict, stats: tuple, gamma) -> dict:
    """Per-output {"rtol", "atol"} for one step; ``stats`` = the (mean, var) that normalized y."""
    tolerance = {}
    for key, values in expected.items():
        if values is None or key == "num_updates":
            continue
        dtype = config.input_dtype if key in _BATCH_OUTPUTS else config.param_dtype
        rtol = _rtol(dtype)
        atol = rtol * _scale(values)
        if key == "y" and stats is not None:
            g = float(np.max(np.abs(gamma))) if config.scale and gamma.size else 1.0
            atol += 8 * machine_epsilon(compute_dtype(config.input_dtype)) * g * _offset_ratio(*stats, config)
        tolerance[key] = {"rtol": rtol, "atol": atol}
    return tolerance
