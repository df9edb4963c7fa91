"""Shared pieces of the tf_keras (Keras 2) adapters: lazy import, reasons, path predicates, deviations.

Nothing here imports TensorFlow at import time. The predicates mirror, in pure Python, the
rule tf_keras uses to pick its fused path, so that deviations can be selected per cell; the
layer adapters check at run time that the built layer took the predicted path.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np

from ..base import Deviation, MatchesVariant, Mismatches, Raises, variant
from .common import tf

# tf-keras source (same code as the installed tf_keras/src/layers/normalization/batch_normalization.py):
# non-fused updates use tf.nn.moments (biased) and _assign_moving_average; the fused path keeps
# the FusedBatchNormV3 running variance (Bessel-corrected); zero-size batches are guarded only
# under a distribution strategy (_support_zero_size_input, TODO b/129279393).
BN_SOURCE = ("https://github.com/keras-team/tf-keras/blob/6add81a967a830418b1507ac99ddba2d4e43a62b/"
             "tf_keras/layers/normalization/batch_normalization.py")
FUSED_VS_NONFUSED_ISSUE = "https://github.com/tensorflow/tensorflow/issues/55545"
MOMENTS_DOC = "https://tensorflow.org/api_docs/python/tf/nn/moments"
LAYER = "tf_keras BatchNormalization"


@functools.lru_cache(maxsize=None)
def tf_keras():
    """The ``tf_keras`` module, imported on first use (after TensorFlow, quietly)."""
    tf()
    import tf_keras as module

    return module


# --- Reasons a case cannot be expressed ---------------------------------------------------------


def running_rule_reason(config, api: str = LAYER) -> str | None:
    """Why the running-statistics knobs cannot be expressed by the Keras 2 EMA, else None."""
    rs = config.running_stats
    if rs.rule == "cumulative":
        return f"{api} has no cumulative-average option (momentum is a fixed EMA decay)"
    if rs.zero_debias:
        return (f"{api} updates moving statistics with a plain EMA "
                f"(moving -= (1 - momentum) * (moving - batch)); it has no zero-debias option")
    if rs.num_updates_schedule:
        return (f"{api} keeps no update counter and a constant momentum; "
                f"it has no min(decay, (1+n)/(10+n)) schedule")
    return None


def batch_without_update_reason(case, api: str = LAYER) -> str | None:
    """Keras 2 (TF2 behaviour) cannot normalize with batch statistics without updating."""
    if any(s.is_training and not s.update_running_stats for s in case.steps):
        return (f"{api} always updates the moving statistics when called with training=True; "
                f"trainable=False instead forces inference (moving statistics), so a step with "
                f"batch statistics but no update cannot be requested")
    return None


def ghost_split_reason(case, api: str = LAYER) -> str | None:
    """tf_keras forms ghost batches by reshaping to [V, B / V, ...]: interleaved, not contiguous
    (the two agree when V is 1 or the whole batch)."""
    size = case.config.virtual_batch_size
    if size is None or case.config.ghost_split == "interleaved":
        return None
    if any(s.is_training and size not in (1, s.x.shape[0]) for s in case.steps):
        return (f"{api}(virtual_batch_size=V) reshapes the batch to [V, B/V, ...], so ghost batch g holds "
                f"samples g, g+B/V, ... (interleaved); it has no contiguous split")
    return None


def param_dtype_reason(config, api: str = LAYER) -> str | None:
    """Keras keeps float32 variables for half inputs and the input dtype otherwise."""
    expected = "float32" if config.input_dtype in ("float16", "bfloat16") else config.input_dtype
    if config.param_dtype != expected:
        return (f"{api} with dtype={config.input_dtype} keeps its variables in {expected}; "
                f"it cannot hold {config.param_dtype} parameters")
    return None


# --- Which path runs, and when a difference in the running variance is observable --------------


def auto_uses_fused(case) -> bool:
    """fused=None picks the fused kernel for 4-D/5-D input with the channel axis at 1 or last,
    unless the compute dtype is float64 or renorm / virtual_batch_size is set
    (BatchNormalizationBase._raise_if_fused_cannot_be_used and build)."""
    cfg, rank = case.config, case.rank
    return (rank in (4, 5) and cfg.channel_axis in (1, rank - 1) and cfg.input_dtype != "float64"
            and cfg.renorm is None and cfg.virtual_batch_size is None)


def update_counts(case) -> list[tuple]:
    """(step, elements per channel of one (ghost) batch) for every updating training step."""
    size = case.config.virtual_batch_size
    found = []
    for step, n in zip(case.steps, case.reduce_counts()):
        if step.is_training and step.update_running_stats:
            found.append((step, n * size // step.x.shape[0] if size and n else n))
    return found


def variance_kind_observable(case) -> bool:
    """Some update folds a (ghost) batch of N >= 2 with a decay < 1, so biased and Bessel differ."""
    decay = case.config.running_stats.decay
    if decay is None or decay >= 1.0:
        return False
    return any(m >= 2 for _, m in update_counts(case))


def has_empty_update(case) -> bool:
    """Some updating training step sees an empty batch (N == 0)."""
    return any(s.is_training and s.update_running_stats and n == 0
               for s, n in zip(case.steps, case.reduce_counts()))


# --- Deviations --------------------------------------------------------------------------------


def empty_batch_deviation(api: str) -> Deviation:
    return Deviation(
        name="empty-batch-poisons-moving-stats",
        applies_to="training steps with an empty batch (N = 0) that should leave the running statistics alone",
        applies=lambda c, d: has_empty_update(c),
        behaviour=Mismatches(("running_mean", "running_var"), "moving_mean and moving_variance become NaN"),
        explanation=(f"{api} folds the NaN moments of an empty batch into the moving statistics; the "
                     "zero-size guard (_support_zero_size_input) only exists under a tf.distribute strategy"),
        link=BN_SOURCE,
    )


def nonfused_biased_deviation(api: str, on_path) -> Deviation:
    return Deviation(
        name="nonfused-running-variance-biased",
        applies_to="non-fused path, cases asking for a Bessel-corrected running variance (N >= 2, decay < 1)",
        applies=lambda c, d: (on_path(c) and c.config.running_stats.variance == "bessel"
                              and variance_kind_observable(c) and not has_empty_update(c)),
        behaviour=MatchesVariant("running variance uses the biased batch variance",
                                 lambda c: variant(c, running_stats={"variance": "biased"})),
        explanation=(f"{api} non-fused path folds tf.nn.moments' biased variance (divide by N) into "
                     "moving_variance, while its fused path uses N/(N-1); see tensorflow/tensorflow#55545"),
        link=FUSED_VS_NONFUSED_ISSUE,
    )


def fused_bessel_deviation(api: str, on_path) -> Deviation:
    return Deviation(
        name="fused-running-variance-bessel",
        applies_to="fused path, cases asking for a biased running variance (N >= 2, decay < 1)",
        applies=lambda c, d: (on_path(c) and c.config.running_stats.variance == "biased"
                              and variance_kind_observable(c) and not has_empty_update(c)),
        behaviour=MatchesVariant("running variance uses the Bessel-corrected batch variance",
                                 lambda c: variant(c, running_stats={"variance": "bessel"})),
        explanation=(f"{api} fused path (FusedBatchNormV3) folds the unbiased variance N/(N-1) into "
                     "moving_variance, unlike its non-fused path; see tensorflow/tensorflow#55545"),
        link=FUSED_VS_NONFUSED_ISSUE,
    )


def squares_overflow_float32(case) -> bool:
    """Statistics computed in float32 from a training input beyond sqrt(float32 max) ~ 1.8e19,
    where the squared deviations of tf.nn.moments overflow to inf."""
    if case.config.input_dtype not in ("float32", "bfloat16"):
        return False
    limit = float(np.sqrt(np.finfo(np.float32).max))
    for step in case.steps:
        x = np.asarray(step.x, dtype=np.float64)
        if step.is_training and np.any(np.abs(x[np.isfinite(x)]) > limit):
            return True
    return False


def overflow_deviation(api: str, outputs: tuple[str, ...]) -> Deviation:
    return Deviation(
        name="float32-variance-overflow",
        applies_to="float32 statistics of inputs beyond ~1.8e19, whose squares overflow float32",
        applies=lambda c, d: squares_overflow_float32(c),
        behaviour=Mismatches(outputs, f"{', '.join(outputs)} overflow (variance inf, y collapses to beta)"),
        explanation=(f"{api} computes the batch variance with tf.nn.moments in float32 (squared "
                     "differences overflow to inf), where the float64 oracle stays finite"),
        link=MOMENTS_DOC,
    )


def float32_rounded_decay(decay: float) -> float:
    """The decay implied by the update when 1 - momentum is first made a float32 tensor."""
    return 1.0 - float(np.float32(1.0 - decay))


def decay_rounding_observable(case) -> bool:
    """float64 variables updated with a decay whose 1 - decay is not a float32 number."""
    decay = case.config.running_stats.decay
    if case.config.param_dtype != "float64" or decay is None or float32_rounded_decay(decay) == decay:
        return False
    return any(m >= 1 for _, m in update_counts(case))


def _rounded_decay_variant(case):
    """Biased running variance, and every EMA decay (renorm's too) as float32(1 - decay) implies."""
    changes = {}
    if case.config.renorm is not None:
        changes["renorm"] = replace(case.config.renorm, decay=float32_rounded_decay(case.config.renorm.decay))
    return variant(case, running_stats={"variance": "biased",
                                        "decay": float32_rounded_decay(case.config.running_stats.decay)}, **changes)


def float64_decay_deviation(api: str, on_path) -> Deviation:
    return Deviation(
        name="float64-momentum-rounded-to-float32",
        applies_to="non-fused path with float64 variables and a decay such as 0.9 whose 1 - decay is inexact in float32",
        applies=lambda c, d: on_path(c) and decay_rounding_observable(c) and not has_empty_update(c),
        behaviour=MatchesVariant(
            "running statistics use float32(1 - momentum) as the weight on the batch (and the biased variance)",
            _rounded_decay_variant),
        explanation=(f"{api} _assign_moving_average builds tf.convert_to_tensor(1.0 - momentum), a float32 "
                     "tensor, then casts it to the float64 variable: 0.1 becomes 0.10000000149 (rel. 1.5e-8)"),
        link=BN_SOURCE,
    )


def renorm_float64_deviation(api: str) -> Deviation:
    return Deviation(
        name="renorm-float64-raises",
        applies_to="renorm=True with float64 variables (any training step)",
        applies=lambda c, d: c.config.renorm is not None and c.config.param_dtype == "float64",
        behaviour=Raises("InvalidArgumentError", "Maximum"),
        explanation=(f"{api} _renorm_correction_and_moments computes tf.maximum(renorm_stddev, "
                     "tf.sqrt(epsilon)); tf.sqrt of the Python float is a float32 tensor, so a float64 layer raises"),
        link=BN_SOURCE,
    )


# --- tf_keras.backend -------------------------------------------------------------------------


def _bessel_observable(case, on_route, device) -> bool:
    """A batch step on the fused route where the factor N/(N-1) on the expected batch variance
    exceeds that output's tolerance (a bfloat16 tolerance can absorb it)."""
    for step, n in zip(case.steps, case.reduce_counts()):
        tol, expected = step.tolerance.get("batch_var"), step.expected.get("batch_var")
        if not step.is_training or n < 2 or tol is None or expected is None:
            continue
        size = np.nanmax(np.abs(expected)) if np.isfinite(expected).any() else 0.0
        if (n / (n - 1) - 1) * size > tol["atol"] + tol["rtol"] * size:
            return on_route(case, device)
    return False


def _float64_reaches_fused_kernel(case, on_route, device) -> bool:
    """4-D float64 input that the backend hands to fused_batch_norm (eval always, training on its route)."""
    if case.config.input_dtype != "float64" or case.rank != 4:
        return False
    return any(not s.is_training or on_route(case, device) for s in case.steps)


def _nchw_eval_without_affine(case, device) -> bool:
    cfg = case.config
    return (device == "cpu" and case.rank == 4 and cfg.channel_axis == 1 and not (cfg.scale and cfg.center)
            and any(not s.is_training for s in case.steps))


def backend_deviations(api: str, link: str, on_route) -> tuple[Deviation, ...]:
    """What tf_keras.backend.normalize_batch_in_training / batch_normalization do differently."""
    return (
        Deviation(
            name="backend-float64-4d-raises",
            applies_to="4-D float64 input on the fused_batch_norm route (every eval step; NHWC training)",
            applies=lambda c, d: _float64_reaches_fused_kernel(c, on_route, d),
            behaviour=Raises("InvalidArgumentError", "not in the list of allowed values"),
            explanation=(f"{api} sends 4-D input to fused_batch_norm without checking the dtype, and "
                         "FusedBatchNormV3 has no float64 kernel (the layer falls back to non-fused instead)"),
            link=link),
        Deviation(
            name="backend-nchw-eval-none-gamma-beta-raises",
            applies_to="batch_normalization on 4-D NCHW input on CPU with scale or center off (gamma/beta None)",
            applies=lambda c, d: _nchw_eval_without_affine(c, d),
            behaviour=Raises("ValueError", r"Attempt to convert a value \(None\)"),
            explanation=(f"{api}.batch_normalization replaces a None gamma/beta by ones/zeros only for NHWC, or "
                         "NCHW where NCHW is supported (GPU); on CPU it passes None to fused_batch_norm"),
            link=link),
        overflow_deviation(f"{api}.normalize_batch_in_training", ("y", "batch_var")),
        Deviation(
            name="backend-fused-route-unbiased-batch-var",
            applies_to="normalize_batch_in_training on 4-D input routed to fused_batch_norm, N/(N-1) beyond tolerance",
            applies=lambda c, d: _bessel_observable(c, on_route, d),
            behaviour=Mismatches(("batch_var",), "the returned batch variance is Bessel-corrected"),
            explanation=("normalize_batch_in_training returns fused_batch_norm's variance, which is unbiased "
                         "(N/(N-1)); its other routes return tf.nn.moments' biased variance"),
            link=link),
    )
