"""Shared pieces of the tf_keras (Keras 2) adapters: lazy import, capabilities, selectors, deviations.

Nothing here imports TensorFlow at import time. ``fused_path`` mirrors, in pure Python, the rule
tf_keras uses to pick its fused kernel when ``fused=None``, so that the path-dependent
convention (the running-variance kind) and the path-dependent deviations are selected per cell;
the layer adapters check at run time that the built layer took the predicted path.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np

from ...caseformat.model import GHOST_SPLITS
from ...judging.capabilities import HALF_DTYPES, Capabilities, dtype_pairs
from ...judging.compare import output_mismatch
from ...judging.selectors import (Selector, param_dtype_in, updates_infinite_running_mean, updates_on_empty_batch,
                                  uses_extension, where)
from ..base import Deviation, MatchesVariant, Mismatches, Raises, variant
from ..findings import empty_batch_nan_running_stats, float32_variance_overflow
from .common import float32_rounded_decay, infinite_mean_nan, tf

# tf-keras source (same code as the installed tf_keras/src/layers/normalization/batch_normalization.py):
# non-fused updates use tf.nn.moments (biased) and _assign_moving_average; the fused path keeps
# the FusedBatchNormV3 running variance (Bessel-corrected); zero-size batches are guarded only
# under a distribution strategy (_support_zero_size_input, TODO b/129279393).
BN_SOURCE = ("https://github.com/keras-team/tf-keras/blob/6add81a967a830418b1507ac99ddba2d4e43a62b/"
             "tf_keras/layers/normalization/batch_normalization.py")
MOMENTS_DOC = "https://tensorflow.org/api_docs/python/tf/nn/moments"
LAYER = "tf_keras BatchNormalization"

# Keras layers take one dtype: variables in it, except float32 variables for half inputs.
KERAS_DTYPES = dtype_pairs(("float64", "float32")) | dtype_pairs(HALF_DTYPES, same=False)


@functools.lru_cache(maxsize=None)
def tf_keras():
    """The ``tf_keras`` module, imported on first use (after TensorFlow, quietly)."""
    tf()
    import tf_keras as module

    return module


def tensorflow_for(version: str) -> tuple[str, ...]:
    """A version sweep's TensorFlow beside tf_keras ``version``: tf_keras X.Y is released for (and
    requires) TensorFlow X.Y, so its environment pins ``tensorflow~=X.Y.0``."""
    major, minor = (version.split(".") + ["0"])[:2]
    return (f"tensorflow~={major}.{minor}.0",)


def layer_defaults(layer_class) -> dict[str, float]:
    """momentum and epsilon defaults of a Keras BatchNormalization class, read from its signature."""
    import inspect

    parameters = inspect.signature(layer_class.__init__).parameters
    return {"decay_parameter": parameters["momentum"].default, "epsilon": parameters["epsilon"].default}


def tape_vjp(call, x, params: dict, dy) -> tuple:
    """``y = call(x)`` and the VJP of y with cotangent ``dy`` by ``tf.GradientTape``: the
    derivatives of sum(dy * y) w.r.t. x (``dx``) and each tensor or variable in ``params``
    (``{"dgamma": gamma, ...}``; None entries are skipped), as flat NumPy arrays for the params.

    The tape records exactly the call that produced y (and whatever updates it runs, which are
    not on y's path); gradients w.r.t. variables come back in the variables' dtype.
    """
    from .common import to_numpy

    params = {k: v for k, v in params.items() if v is not None}
    with tf().GradientTape(watch_accessed_variables=False) as tape:
        tape.watch([x, *params.values()])
        y = call(x)
    grads = tape.gradient(y, [x, *params.values()], output_gradients=tf().constant(np.asarray(dy), dtype=y.dtype))
    names = ["dx", *params]
    if any(g is None for g in grads):
        raise RuntimeError(f"Expected: gradients {names}. Received: None for "
                           f"{[n for n, g in zip(names, grads) if g is None]} (not connected to y)")
    # params may be (1, .., C, ..) (ghost batches, broadcast shapes): flattened to (C,)
    return y, {n: to_numpy(g) if n == "dx" else to_numpy(g).reshape(-1) for n, g in zip(names, grads)}


# --- Which path runs -----------------------------------------------------------------------------


def auto_uses_fused(case) -> bool:
    """fused=None picks the fused kernel for 4-D/5-D input with the channel axis at 1 or last,
    unless the compute dtype is float64 or renorm / virtual_batch_size is set
    (BatchNormalizationBase._raise_if_fused_cannot_be_used and build)."""
    cfg, rank = case.config, case.rank
    return (rank in (4, 5) and cfg.channel_axis in (1, rank - 1) and cfg.input_dtype != "float64"
            and cfg.renorm is None and cfg.virtual_batch_size is None)


fused_path = where("fused=None takes the fused kernel (4-D/5-D non-float64 input, channel axis 1 or last, "
                   "no renorm or ghost batches)")(auto_uses_fused)


@where("ghost batches of one sample or of the whole batch (contiguous and interleaved splits agree)")
def ghost_splits_agree(case) -> bool:
    """tf_keras reshapes to [V, B/V, ...] (interleaved); with V == 1 or V == B both splits coincide."""
    size = case.config.virtual_batch_size
    return all(not s.is_training or size in (1, s.x.shape[0]) for s in case.steps)


# tf.GradientTape differentiates both calls: training=True through the batch moments, training=False
# (also what a frozen layer, trainable=False, runs) through the moving statistics as constants.
GRADIENTS = frozenset({"batch", "running"})

# Conventions: eps inside the sqrt, a plain constant-momentum EMA, training=True always updates;
# the running variance is biased on the non-fused path (tf.nn.moments), Bessel on the fused one.
LAYER_CAPABILITIES = Capabilities(
    epsilon_modes=frozenset({"add_inside_sqrt"}), running_variance=frozenset({"biased"}),
    zero_debias=frozenset({False}), num_updates_schedule=frozenset({False}), running_rules=frozenset({"ema"}),
    step_kinds=frozenset({("batch", True), ("running", False)}), dtypes=KERAS_DTYPES,
    extensions=frozenset({"renorm", "virtual_batch_size"}), ghost_splits=frozenset({"interleaved"}),
    gradients=GRADIENTS, when=((ghost_splits_agree, {"ghost_splits": GHOST_SPLITS}),))


def layer_capabilities(fused: bool | None) -> Capabilities:
    """LAYER_CAPABILITIES for the ``fused`` argument: fused=True only has the fused kernel's
    ranks, axes, dtypes and no extensions; fused=None switches the variance kind per case."""
    if fused is None:
        return replace(LAYER_CAPABILITIES, when=LAYER_CAPABILITIES.when + ((fused_path, {"running_variance": {"bessel"}}),))
    if not fused:
        return LAYER_CAPABILITIES
    return replace(LAYER_CAPABILITIES, running_variance=frozenset({"bessel"}), ranks=frozenset({4, 5}),
                   channel_positions=frozenset({"first", "last"}), extensions=frozenset(),
                   dtypes=KERAS_DTYPES - {("float64", "float64")}, when=())


# --- Deviations ----------------------------------------------------------------------------------


def empty_batch_deviation(api: str) -> Deviation:
    return empty_batch_nan_running_stats(
        "empty-batch-poisons-moving-stats",
        (f"{api} folds the NaN moments of an empty batch into the moving statistics; the "
         "zero-size guard (_support_zero_size_input) only exists under a tf.distribute strategy"),
        BN_SOURCE)


def infinite_mean_deviation(api: str, applies: Selector = updates_infinite_running_mean) -> Deviation:
    """_assign_moving_average's subtractive form on a +-Inf moving mean (fuzz finding, promoted)."""
    return infinite_mean_nan("moving-average-turns-infinite-mean-nan", f"{api} _assign_moving_average",
                             link=f"{BN_SOURCE}#L870", applies=applies)


def overflow_deviation(api: str, outputs: tuple[str, ...]) -> Deviation:
    return float32_variance_overflow(
        "float32-variance-overflow",
        (f"{api} computes the batch variance with tf.nn.moments in float32 (squared "
         "differences overflow to inf), where the float64 oracle stays finite"),
        MOMENTS_DOC, outputs=outputs)


@where("float64 variables updated with a decay whose 1 - decay is inexact in float32 (e.g. 0.9)")
def decay_rounding_observable(case) -> bool:
    decay = case.config.running_stats.decay
    if case.config.param_dtype != "float64" or decay is None or float32_rounded_decay(decay) == decay:
        return False
    return any(s.is_training and s.update_running_stats for s in case.steps)


def _rounded_decay_variant(case):
    """Every EMA decay (renorm's too) as float32(1 - decay) implies; nothing else changes."""
    changes = {}
    if case.config.renorm is not None:
        changes["renorm"] = replace(case.config.renorm, decay=float32_rounded_decay(case.config.renorm.decay))
    return variant(case, running_stats={"decay": float32_rounded_decay(case.config.running_stats.decay)}, **changes)


def float64_decay_deviation(api: str) -> Deviation:
    """Only the non-fused path runs float64 (the fused kernel has no float64), so no path selector."""
    return Deviation(
        name="float64-momentum-rounded-to-float32",
        kind="dtype",
        applies=decay_rounding_observable & ~updates_on_empty_batch,
        behaviour=MatchesVariant("running statistics use float32(1 - momentum) as the weight on the batch",
                                 _rounded_decay_variant),
        explanation=(f"{api} _assign_moving_average builds tf.convert_to_tensor(1.0 - momentum), a float32 "
                     "tensor, then casts it to the float64 variable: 0.1 becomes 0.10000000149 (rel. 1.5e-8)"),
        link=BN_SOURCE,
    )


def renorm_float64_deviation(api: str) -> Deviation:
    return Deviation(
        name="renorm-float64-raises",
        kind="defect",
        applies=uses_extension("renorm") & param_dtype_in("float64"),
        behaviour=Raises("InvalidArgumentError", "Maximum"),
        explanation=(f"{api} _renorm_correction_and_moments computes tf.maximum(renorm_stddev, "
                     "tf.sqrt(epsilon)); tf.sqrt of the Python float is a float32 tensor, so a float64 layer raises"),
        link=BN_SOURCE,
    )


# --- tf_keras.backend ----------------------------------------------------------------------------


def backend_route_selectors(on_route) -> tuple[Selector, Selector]:
    """(batch_var's N/(N-1) beyond tolerance on the fused route, float64 reaching the fused kernel)."""
    def bessel_observable(case, device) -> bool:
        for index, (step, n) in enumerate(zip(case.steps, case.reduce_counts())):
            expected = step.expected.get("batch_var")
            if not step.is_training or n < 2 or expected is None or step.tolerance.get("batch_var") is None:
                continue
            if output_mismatch(case, index, "batch_var", np.asarray(expected) * (n / (n - 1))) is not None:
                return on_route(case, device)
        return False

    def float64_reaches_fused(case, device) -> bool:
        if case.config.input_dtype != "float64" or case.rank != 4:
            return False
        return any(not s.is_training or on_route(case, device) for s in case.steps)

    return (Selector("a training step routed to fused_batch_norm (4-D, channels last; NCHW on GPU) where "
                     "N/(N-1) on batch_var would fail it (its bounds, or their bias check)", bessel_observable),
            Selector("4-D float64 input reaching fused_batch_norm (every eval step; training on its route)",
                     float64_reaches_fused))


def _nchw_eval_without_affine(case, device) -> bool:
    cfg = case.config
    return (device == "cpu" and case.rank == 4 and cfg.channel_axis == 1 and not (cfg.scale and cfg.center)
            and any(not s.is_training for s in case.steps))


nchw_eval_without_affine = Selector("an eval step on 4-D NCHW input on CPU with scale or center off",
                                    _nchw_eval_without_affine)


def backend_deviations(api: str, link: str, on_route) -> tuple[Deviation, ...]:
    """What tf_keras.backend.normalize_batch_in_training / batch_normalization do differently."""
    bessel_on_route, float64_on_route = backend_route_selectors(on_route)
    return (
        Deviation(
            name="backend-float64-4d-raises",
            kind="defect",
            applies=float64_on_route,
            behaviour=Raises("InvalidArgumentError", "not in the list of allowed values"),
            explanation=(f"{api} sends 4-D input to fused_batch_norm without checking the dtype, and "
                         "FusedBatchNormV3 has no float64 kernel (the layer falls back to non-fused instead)"),
            link=link),
        Deviation(
            name="backend-nchw-eval-none-gamma-beta-raises",
            kind="defect",
            applies=nchw_eval_without_affine,
            behaviour=Raises("ValueError", r"Attempt to convert a value \(None\)"),
            explanation=(f"{api}.batch_normalization replaces a None gamma/beta by ones/zeros only for NHWC, or "
                         "NCHW where NCHW is supported (GPU); on CPU it passes None to fused_batch_norm"),
            link=link),
        overflow_deviation(f"{api}.normalize_batch_in_training", ("y", "batch_var", "dx", "dgamma")),
        Deviation(
            name="backend-fused-route-unbiased-batch-var",
            kind="defect",
            applies=bessel_on_route,
            behaviour=Mismatches(("batch_var",), "the returned batch variance is Bessel-corrected"),
            explanation=("normalize_batch_in_training returns fused_batch_norm's variance, which is unbiased "
                         "(N/(N-1)); its other routes return tf.nn.moments' "
                         "biased variance, so the same function returns two kinds"),
            link=link),
    )
