"""A worked example: wrapping your own BN kernel (here: plain NumPy in float32) as an adapter.

Run it with ``bnconform check cases/formulas --adapter examples.my_numpy_bn:MyNumpyBN`` from
the repository root, or ``pytest --bn-adapter examples.my_numpy_bn:MyNumpyBN``.
"""

from __future__ import annotations

import numpy as np

from bnconform.adapters import (Adapter, Capabilities, Deviation, Mismatches, dtype_pairs, squares_overflow,
                                training_step)

# What this kernel can express, as data: the judge makes every other case "unsupported" with the
# reason, and a case asking for another *convention* (a biased running variance, say) only where
# its expected results depend on it.
CAPABILITIES = Capabilities(
    epsilon_modes=frozenset({"add_inside_sqrt"}),  # conventions this kernel fixes
    running_variance=frozenset({"bessel"}),
    zero_debias=frozenset({False}),
    num_updates_schedule=frozenset({False}),
    running_rules=frozenset({"ema"}),  # structural limits
    dtypes=dtype_pairs(inputs=("float32", "float16")),
)


class MyNumpyBN(Adapter):
    """float32 BN with an EMA of running stats (weight on old = decay), Bessel-corrected variance."""

    name = "example.my_numpy_bn"
    framework = "numpy"  # its version goes into the report
    extra = "test"
    requires = ("numpy",)
    device_kinds = ("cpu",)
    notes = "docs/adapters.md worked example: a hand-written float32 kernel"
    capabilities = CAPABILITIES
    decay_parameter = ("decay", "old")
    deviations = (
        Deviation(
            name="n1-nan-running-var",
            kind="edge",  # N == 1: a point where the textbook formula has no answer
            applies=training_step(1, 1),
            behaviour=Mismatches(("running_var", "y"), "running variance becomes NaN, so later eval outputs are NaN"),
            explanation="divides by N - 1 = 0 for the Bessel correction instead of max(N - 1, 1)",
            link="https://github.com/pytorch/pytorch/issues/1381",
        ),
        Deviation(
            name="float32-variance-overflow",
            kind="precision",  # right formula, an intermediate overflows
            applies=squares_overflow("float32"),
            behaviour=Mismatches(("y", "batch_var", "running_var"), "variance overflows to Inf, y collapses to beta"),
            explanation="accumulates (x - mean)^2 in float32, which overflows above 1.8e19 per term",
            link="https://numpy.org/doc/stable/reference/generated/numpy.var.html",
        ),
    )

    def run(self, case, device):
        cfg, state = case.config, case.initial_state
        mean, var = state.running_mean.astype(np.float32), state.running_var.astype(np.float32)
        gamma = state.gamma.astype(np.float32) if cfg.scale else np.float32(1)
        beta = state.beta.astype(np.float32) if cfg.center else np.float32(0)
        axes = tuple(a for a in range(case.rank) if a != cfg.channel_axis)
        shape = [1] * case.rank
        shape[cfg.channel_axis] = -1
        results = []
        for step in case.steps:
            x = step.x.astype(np.float32)
            n = x.size // x.shape[cfg.channel_axis] if x.size else 0
            with np.errstate(all="ignore"):
                batch_mean, batch_var = x.mean(axis=axes), x.var(axis=axes)
                use_mean, use_var = (batch_mean, batch_var) if step.is_training else (mean, var)
                inv = gamma / np.sqrt(use_var + np.float32(cfg.effective_epsilon))
                y = (x - use_mean.reshape(shape)) * inv.reshape(shape) + np.broadcast_to(beta, inv.shape).reshape(shape)
                if step.update_running_stats and n > 0:
                    d = np.float32(cfg.running_stats.decay)
                    mean = d * mean + (1 - d) * batch_mean
                    var = d * var + (1 - d) * batch_var * np.float32(n / (n - 1) if n > 1 else np.nan)
            out = {"y": y.astype(step.x.dtype), "running_mean": mean.copy(), "running_var": var.copy()}
            if step.is_training and n > 0:
                out.update(batch_mean=batch_mean, batch_var=batch_var)
            results.append(out)
        return results
