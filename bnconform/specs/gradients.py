"""gradients: dx, dgamma and dbeta of training (batch statistics) and inference (running) BN.

Every step carries an upstream gradient dy; the oracle's gradients are the chain rule through
exactly the forward pass (formulas in bnconform.caseformat.model). The family covers ranks 2-5, channels
first and last, every epsilon placement, scale / center on and off, negative and zero gamma,
dy all-ones (training dx ~ 0: the mean and variance absorb any per-channel constant), float64 /
float32 / float16 / bfloat16, N = 2, N = 1 in inference and training, N = 0, a constant channel,
1e4 + N(0, 1) and mixed-sign ~1e21 (squares overflow) in float32, inference after training (the
second gradient depends on the running statistics the first step updated), ghost batches and
sample weights at ranks 2-5, renorm, half inputs (float16, bfloat16) with batch statistics and no
update, and cross-replica (synchronized) steps, whose backward must all-reduce its own sums.

Each description quotes what a wrong backward gets: treating the batch mean and variance as
constants (dx = gamma * dy / sigma, the classic shortcut) in training, or differentiating through
batch statistics in inference.
"""

from __future__ import annotations

import numpy as np

from ..caseformat.model import Config, Renorm, RunningStats
from ..reference.moments import broadcast, inverse_std
from .replicas import per_replica
from .spec import EVAL, TRAIN, TRAIN_NO_UPDATE, Spec, normal

FAMILY = "gradients"


def random_dy(rng, shape, step_index):
    """dy ~ N(0, 1): every term of the backward contributes."""
    return rng.normal(0.0, 1.0, size=shape)


def ones_dy(rng, shape, step_index):
    """dy = 1 everywhere: sum(dy * y) = sum(y), whose training dx is 0 (y's mean is beta)."""
    return np.ones(shape)


def _constant_stats_dx(case, step, expected) -> np.ndarray:
    """The shortcut backward: gamma * f(v) * dy, as if mu and var did not depend on x."""
    config, x = case.config, np.asarray(step.x, np.float64)
    var = expected["batch_var"] if expected.get("batch_var") is not None else case.initial_state.running_var
    gamma = case.initial_state.gamma.astype(np.float64) if config.scale else np.ones(case.channels)
    factor = broadcast(gamma * inverse_std(np.asarray(var, np.float64), config), x.ndim, config.channel_axis)
    return factor * np.asarray(step.dy, np.float64)


def describe(text: str):
    """A description ending with how far the constant-statistics backward lands (training) or
    what the running-statistics gradient is (inference), computed on the built case."""
    def build_text(case) -> str:
        gaps = [float(np.abs(_constant_stats_dx(case, s, s.expected) - s.expected["dx"]).max())
                for s in case.steps if s.dy is not None and s.is_training and s.expected.get("batch_var") is not None]
        largest = max(float(np.abs(s.expected["dx"]).max()) for s in case.steps if s.dy is not None)
        if gaps:
            tail = (f" A backward that treats mu_B and var_B as constants (dx = gamma dy / sigma_B) is off "
                    f"by up to {max(gaps):.3g} in dx (largest |dx| {largest:.3g}).")
        else:
            tail = (f" In inference dx = gamma dy / sqrt(running_var + eps) (largest |dx| {largest:.3g}); a "
                    f"backward through batch statistics gets a different dx.")
        return text + tail
    return build_text


def _spec(name, text, config, shape, steps=(TRAIN,), make_x=None, make_dy=random_dy, **state) -> Spec:
    return Spec(FAMILY, name, describe(text), config, [shape], steps, make_x or normal(0.6, 1.4),
                make_dy=make_dy, **state)


_LAYOUTS = [(2, "nc", (8, 3), 1), (3, "ncl", (4, 3, 5), 1), (3, "nlc", (4, 5, 3), 2),
            (4, "nchw", (3, 4, 3, 2), 1), (4, "nhwc", (3, 3, 2, 4), 3),
            (5, "ncdhw", (2, 3, 2, 3, 2), 1), (5, "ndhwc", (2, 2, 3, 2, 3), 4)]


def _layouts():
    for rank, layout, shape, axis in _LAYOUTS:
        yield _spec(f"rank{rank}_{layout}_train", f"Training-mode gradients of a rank-{rank} input {list(shape)} "
                    f"with channels on axis {axis} ({layout}): dx flows through the batch mean and variance of "
                    f"each channel; reducing over the wrong axes mixes channels.", Config(channel_axis=axis), shape)
    for rank, layout, shape, axis in (_LAYOUTS[0], _LAYOUTS[3], _LAYOUTS[4]):
        yield _spec(f"rank{rank}_{layout}_eval", f"Inference-mode gradients ({layout}, running statistics): "
                    f"y is a per-channel affine map of x.", Config(channel_axis=axis), shape, (EVAL,))


def _epsilon():
    yield _spec("eps_outside_sqrt_train", "Training gradients with epsilon outside the square root, "
                "y = gamma (x - mu) / (sqrt(var) + eps): d/dvar is -1 / (2 sqrt(var) (sqrt(var) + eps)^2), not "
                "-(var + eps)^(-3/2) / 2.", Config(channel_axis=1, epsilon=0.05, epsilon_mode="add_outside_sqrt"),
                (6, 3, 2), make_x=normal(0.0, 0.5))
    yield _spec("eps_max_inside_sqrt_train", "Training gradients with max(var, eps) inside the square root and "
                "eps = 0.3 between the channels' variances (std 0.25 ... 1.2): where eps wins the variance path "
                "carries no gradient, elsewhere it does.", Config(channel_axis=1, epsilon=0.3,
                epsilon_mode="max_inside_sqrt"), (8, 3), make_x=lambda r, s: r.normal(0.0, [0.25, 0.5, 1.2], s))
    yield _spec("eps_large_inside_sqrt_train", "Training gradients with eps = 0.5 comparable to the variance: "
                "every term of dx carries sqrt(var + eps); dropping eps from the backward is visible.",
                Config(channel_axis=1, epsilon=0.5), (6, 3), make_x=normal(0.0, 0.7))


def _affine():
    for scale, center, mode in ((False, True, "train"), (True, False, "train"), (False, False, "train"),
                                (False, False, "eval")):
        tag = f"scale_{'on' if scale else 'off'}_center_{'on' if center else 'off'}_{mode}"
        yield _spec(tag, f"scale={scale}, center={center} ({mode}): no dgamma when scale is off and no dbeta "
                    f"when center is off; the stored gamma != 1 must not enter dx when scale is off.",
                    Config(channel_axis=1, scale=scale, center=center), (4, 3, 2, 2),
                    (TRAIN,) if mode == "train" else (EVAL,))


def _gamma_and_dy():
    yield _spec("gamma_negative_train", "Negative gamma: dx changes sign with gamma, dgamma does not.",
                Config(channel_axis=1), (6, 3), gamma=lambda r, c: -r.uniform(0.5, 2.0, c))
    yield _spec("gamma_zero_train", "gamma = 0: dx is exactly 0 but dgamma = sum(dy xhat) is not.",
                Config(channel_axis=1), (6, 3), gamma=lambda r, c: [0.0] * c)
    yield _spec("dy_ones_train", "dy = 1 everywhere in training: dx is 0 up to rounding (sum(y) does not "
                "depend on x); a backward that ignores the mean's dependence on x returns gamma / sigma.",
                Config(channel_axis=1), (5, 3, 4), make_dy=ones_dy)
    yield _spec("dy_ones_nhwc_float64_train", "dy = 1 in float64, channels last: dx is 0 to ~1e-16.",
                Config(channel_axis=3, input_dtype="float64", param_dtype="float64"), (2, 3, 3, 4), make_dy=ones_dy)
    yield _spec("dy_ones_eval", "dy = 1 in inference: dx = gamma / sqrt(running_var + eps), not 0.",
                Config(channel_axis=1), (5, 3), (EVAL,), make_dy=ones_dy)


def _dtypes():
    for dtype, param in (("float64", "float64"), ("float16", "float32"), ("bfloat16", "float32")):
        for mode in ("train", "eval"):
            yield _spec(f"{dtype}_{mode}", f"{dtype} input and dy with {param} parameters ({mode}): the backward "
                        f"should run in float32 or wider and round dx once to {dtype}.",
                        Config(channel_axis=1, input_dtype=dtype, param_dtype=param), (4, 3, 2, 2),
                        (TRAIN,) if mode == "train" else (EVAL,), make_x=normal(1.0, 2.0))


def _degenerate():
    yield _spec("n2_train", "N = 2 per channel: each normalized value is +-1 (up to eps), so dx is small and "
                "made of nearly cancelling terms.", Config(channel_axis=1), (2, 3))
    yield _spec("n1_train", "N = 1 per channel in training: y = beta whatever x is, so the model's dx = 0, "
                "dgamma = 0 and dbeta = dy.", Config(channel_axis=1), (1, 3))
    yield _spec("n1_eval", "N = 1 in inference: the affine map is defined for one sample; dx = gamma dy / "
                "sqrt(running_var + eps).", Config(channel_axis=1), (1, 4), (EVAL,))
    yield _spec("constant_channel_train", "A constant channel (var 0) with eps = 1e-3: xhat = 0, so dgamma = 0, "
                "dx = gamma (dy - mean(dy)) / sqrt(eps), finite.", Config(channel_axis=1, epsilon=1e-3), (6, 3),
                make_x=lambda r, s: np.broadcast_to(r.normal(1.0, 1.0, (1, s[1])) * [[1.0, 1.0, 0.0]] +
                                                    r.normal(0.0, 1.0, s) * [[0.0, 0.0, 1.0]], s))
    yield _spec("offset_1e4_float32_train", "x = 1e4 + N(0, 1) in float32: the backward must use the centered "
                "values; E[x^2] - E[x]^2 style shortcuts lose every digit of dx.", Config(channel_axis=1), (16, 3),
                make_x=normal(1e4, 1.0))
    yield _spec("huge_mixed_sign_float32_train", "float32 x of magnitude ~1e21 with mixed signs and dy ~ N(0, 1): "
                "squared deviations overflow float32 (max 3.4e38): a float32 variance is Inf, so y collapses to beta "
                "and dx = dgamma = 0 (or var = E[x^2] - E[x]^2 = Inf - Inf and everything is NaN); the float64 "
                "moments give finite xhat, dgamma = sum(dy xhat) of order 1 and dx ~ 1e-22. Not ~1e37 as in "
                "degenerate/: dx ~ gamma / sigma would then be subnormal in float32 (flushing denormals is "
                "another question).",
                Config(channel_axis=1), (4, 3),
                make_x=lambda r, s: r.choice([-1.0, 1.0], size=s) * r.uniform(1e20, 3e21, size=s))


def _empty():
    """Found by `bnconform fuzz` on tf.v1.layers, tf_keras, keras3, flax and haiku (promoted); the rank-5
    twins by `bnconform fuzz` on tf_keras and tf.v1.layers (fused path)."""
    tail = ("dx is empty and dgamma = sum(dy xhat), dbeta = sum(dy) are sums over no elements: 0. A backward "
            "that multiplies the empty sum by the batch's rsqrt(var + eps), NaN for var = 0/0, returns "
            "dgamma = 0 * NaN = NaN.")
    yield Spec(FAMILY, "n0_train", "An empty training batch (shape [0, 3]) with dy: the running state stays "
               "unchanged; " + tail, Config(channel_axis=1), [(0, 3)], (TRAIN,), normal(0.6, 1.4),
               make_dy=random_dy)
    yield Spec(FAMILY, "n0_batch_no_update", "An empty batch normalized with its own statistics, no running "
               "update (tf.nn.moments + tf.nn.batch_normalization), so only the gradients are at stake: " + tail,
               Config(channel_axis=1), [(0, 3)], (TRAIN_NO_UPDATE,), normal(0.6, 1.4), make_dy=random_dy)
    rank5 = ("dx must keep the input's shape [0, 2, 3, 2, 2]; a layer that folds the spatial axes into a "
             "rank-4 kernel and unfolds the result only for a non-empty batch hands back the folded shape or fails.")
    yield Spec(FAMILY, "n0_rank5_train", "An empty rank-5 training batch (shape [0, 2, 3, 2, 2], channels on "
               "axis 1) with dy: the running state stays unchanged; " + tail + " " + rank5, Config(channel_axis=1),
               [(0, 2, 3, 2, 2)], (TRAIN,), normal(0.6, 1.4), make_dy=random_dy)
    yield Spec(FAMILY, "n0_rank5_eval", "An empty rank-5 batch (shape [0, 2, 3, 2, 2], channels on axis 1) "
               "normalized with the running statistics, with dy: dgamma and dbeta are sums over no elements (0) "
               "and there is no 0/0 batch variance to multiply them by. " + rank5, Config(channel_axis=1),
               [(0, 2, 3, 2, 2)], (EVAL,), normal(0.6, 1.4), make_dy=random_dy)


def _sequences():
    yield Spec(FAMILY, "train_then_eval", describe(
        "A training step (updates the running statistics) then an inference step: the second step's dx "
        "is gamma dy / sqrt(running_var + eps) with the running statistics the first step left."),
        Config(channel_axis=1, running_stats=RunningStats(decay=0.5)), [(6, 3, 2)], (TRAIN, EVAL),
        normal(2.0, 3.0), make_dy=random_dy)
    yield Spec(FAMILY, "train_train_eval_biased", describe(
        "Two training steps and an inference step with a biased running variance: each gradient uses "
        "its own step's statistics."), Config(channel_axis=1, running_stats=RunningStats(decay=0.3,
        variance="biased")), [(4, 3)], (TRAIN, TRAIN, EVAL), normal(-1.0, 2.0), make_dy=random_dy)


def _without_update():
    yield _spec("batch_no_update_nc", "Batch statistics without a running update (training mode with the "
                "running statistics frozen, e.g. tf.nn.batch_normalization on tf.nn.moments): dx still flows "
                "through the batch mean and variance.", Config(channel_axis=1), (6, 3), (TRAIN_NO_UPDATE,))
    yield _spec("batch_no_update_nhwc_float16", "Batch statistics without an update, float16 input with float32 "
                "parameters, channels last.", Config(channel_axis=3, input_dtype="float16", param_dtype="float32"),
                (2, 3, 2, 4), (TRAIN_NO_UPDATE,), make_x=normal(1.0, 2.0))
    for dtype, rank, layout, shape, axis in (("float16", 3, "ncl", (4, 3, 5), 1), ("bfloat16", 2, "nc", (8, 3), 1),
                                             ("bfloat16", 4, "nchw", (3, 4, 3, 2), 1)):
        yield _spec(f"batch_no_update_{layout}_{dtype}", f"Batch statistics without an update, {dtype} input and dy "
                    f"with float32 parameters, rank {rank} ({layout}): the moments and the backward's sums should "
                    f"run in float32 and round dx once to {dtype} ({dtype} keeps "
                    f"{'11' if dtype == 'float16' else '8'} significant bits).",
                    Config(channel_axis=axis, input_dtype=dtype, param_dtype="float32"), shape, (TRAIN_NO_UPDATE,),
                    make_x=normal(1.0, 2.0))


def _extensions():
    for split in ("contiguous", "interleaved"):
        yield _spec(f"ghost_{split}_train", f"Ghost batches of 2 samples ({split} split): each ghost batch is "
                    f"differentiated through its own moments; dgamma / dbeta sum over all of them.",
                    Config(channel_axis=1, virtual_batch_size=2, ghost_split=split), (6, 3))
    yield _spec("renorm_clipped_train", "Batch Renormalization with r and d clipped: r and d are constants in the "
                "backward (Ioffe 2017), so dx is gamma r times the BN backward and dgamma = sum(dy (xhat r + d)).",
                Config(channel_axis=1, renorm=Renorm(rmin=0.8, rmax=1.25, dmax=0.5)), (6, 3), make_x=normal(0.0, 2.0))
    yield _spec("renorm_unclipped_train", "Batch Renormalization without clipping: r = sigma_B / sigma_R and "
                "d = (mu_B - mu_R) / sigma_R are still constants in the backward; differentiating through them "
                "gives dx = gamma dy / sigma_R.", Config(channel_axis=1, renorm=Renorm()), (6, 3))
    yield _spec("weighted_train", "Sample weights: dmu/dx_i = w_i / W and dvar/dx_i = 2 w_i (x_i - mu) / W.",
                Config(channel_axis=1, running_stats=RunningStats(variance="biased")), (5, 3),
                make_weights=lambda r, b, i: r.uniform(0.2, 2.0, b))


def _extensions_above_rank2():
    """Ghost batches and sample weights at ranks 3-5: the weight (or the ghost batch) of sample i applies
    to every position of that sample, so a backward that broadcasts it along the wrong axis, or groups
    ghost batches after moving channels, is visible in dx."""
    for split, rank, layout, shape, axis in (("contiguous", 3, "ncl", (6, 3, 4), 1),
                                             ("interleaved", 4, "nhwc", (8, 2, 3, 3), 3),
                                             ("contiguous", 5, "ncdhw", (4, 2, 2, 3, 2), 1)):
        yield _spec(f"ghost_{split}_rank{rank}_{layout}_train", f"Ghost batches of 2 samples ({split} split) of a "
                    f"rank-{rank} input {list(shape)} ({layout}): each ghost batch is differentiated through its own "
                    f"per-channel moments over its samples and all their positions; dgamma / dbeta sum over all.",
                    Config(channel_axis=axis, virtual_batch_size=2, ghost_split=split), shape)
    for rank, layout, shape, axis in ((3, "nlc", (5, 4, 3), 2), (4, "nchw", (4, 3, 2, 3), 1),
                                      (5, "ndhwc", (3, 2, 2, 2, 3), 4)):
        yield _spec(f"weighted_rank{rank}_{layout}_train", f"Sample weights on a rank-{rank} input {list(shape)} "
                    f"({layout}): sample i's weight w_i multiplies every position of it, dmu/dx_i = w_i / W and "
                    f"dvar/dx_i = 2 w_i (x_i - mu) / W with W = sum of w over samples and positions.",
                    Config(channel_axis=axis, running_stats=RunningStats(variance="biased")), shape,
                    make_weights=lambda r, b, i: r.uniform(0.2, 2.0, b))


def _replicated():
    """Cross-replica training gradients: the loss is the sum over every replica's sum(dy y), so dx is the
    unsplit batch's backward; a synchronized backward gets there only by all-reducing its sum(dy) and
    sum(dy xhat) across replicas, and dgamma / dbeta are sums over all replicas (what a data-parallel
    all-reduce of the replicas' parameter gradients adds up to)."""
    local = (" A backward that reduces sum(dy) and sum(dy xhat) over its own replica only (the forward synced, "
             "the backward not) gets a different dx on every replica.")
    for name, sizes, inner, axis, means in (("r2_unequal_far_means", (6, 2), (), 1, [-3.0, 3.0]),
                                            ("r4_one_empty_nhwc", (3, 0, 2, 3), (2, 2), 3, [-1.0, 0.0, 1.0, 2.0]),
                                            ("r2_equal_ncl", (3, 3), (4,), 1, [0.5, -0.5])):
        channels = 3
        dims = list(inner)
        dims.insert(axis - 1, channels)
        shape = (sum(sizes), *dims)
        yield Spec(FAMILY, f"replicas_{name}_train", describe(
            f"Synchronized BN over {len(sizes)} replicas of {', '.join(map(str, sizes))} samples "
            f"(input {list(shape)}, channels on axis {axis}), trained with dy." + local),
            Config(channel_axis=axis), [shape], (TRAIN,), per_replica(sizes, means), make_dy=random_dy,
            replica_sizes=[sizes])


def specs():
    yield from _layouts()
    yield from _epsilon()
    yield from _affine()
    yield from _gamma_and_dy()
    yield from _dtypes()
    yield from _degenerate()
    yield from _empty()
    yield from _sequences()
    yield from _without_update()
    yield from _extensions()
    yield from _extensions_above_rank2()
    yield from _replicated()
