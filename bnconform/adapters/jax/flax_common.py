"""What flax.linen and flax.nnx share: the statistics findings of flax's _compute_stats (float32
overflow, empty batches, the fast variance, cross-replica ones), the flax state layout and the
step loop (:func:`flax_state`, :func:`run_flax_steps`). Importing this module does not import JAX.
"""

from __future__ import annotations

from ...caseformat.model import Case
from ...judging.declarations import release
from ...judging.selectors import input_dtype_in, mean_far_from_spread, where
from ..base import Deviation, Mismatches
from ..findings import empty_batch_nan_running_stats, float32_variance_overflow
from .common import JAX_CAPABILITIES, JaxAdapter, _training_split, fetch, gradient_outputs, load_jax, put_state

FLAX_NORMALIZATION_SOURCE = "https://github.com/google/flax/blob/main/flax/linen/normalization.py"
NNX_NORMALIZATION_SOURCE = "https://github.com/google/flax/blob/main/flax/nnx/nn/normalization.py"
# A commit whose normalization files equal flax 0.12.8's (the line anchors below are checked there).
FLAX_AT = "https://github.com/google/flax/blob/18f8f311c275d57f46d95e41b15aa97b454754c0/flax/"


# flax linen and nnx share the statistics code (flax/linen/normalization.py: _compute_stats).
FLAX_FLOAT32_VARIANCE_OVERFLOW = float32_variance_overflow(
    "flax-float32-variance-overflow",
    "statistics of float32 inputs are reduced in float32 (force_float32_reductions promotes only "
    "up to float32); the variance ~1.7e74 overflows: the two-pass variance is inf and y collapses "
    "to beta, the fast one is inf - inf = NaN",
    FLAX_NORMALIZATION_SOURCE,
    effect="inf with the two-pass variance (y = beta, dx = dgamma = 0), NaN with the fast one (all NaN)")

FLAX_EMPTY_BATCH_POISONS_RUNNING_STATS = empty_batch_nan_running_stats(
    "flax-empty-batch-nan-running-stats",
    "the mean over zero elements is NaN and is folded into the running statistics anyway: "
    "corrupted state (the model keeps the state unchanged for N == 0)",
    FLAX_NORMALIZATION_SOURCE)


@where("a training step split over replicas of unequal sizes, none empty")
def unequal_replicas(case: Case) -> bool:
    return _training_split(case) == "unequal"


@where("a training step split over replicas, some but not all of them empty")
def some_replica_empty(case: Case) -> bool:
    return _training_split(case) == "empty"


def flax_replica_deviations(prefix: str, link: str) -> tuple[Deviation, Deviation]:
    """flax's cross-replica findings (linen and nnx each have this _compute_stats): with
    ``axis_name`` the statistics are ``lax.pmean`` of each device's (masked) means, every device
    weighing 1/R whatever its count; unequal replicas, expressed with the documented ``mask``, get
    the mean of the replicas' moments, and an empty replica's 0/0 reaches every device."""
    unweighted = Deviation(
        name=f"{prefix}-cross-replica-mean-of-means", kind="defect", applies=unequal_replicas,
        behaviour=Mismatches(("y", "running_mean", "running_var", "dx", "dgamma"),
                             "y, the running statistics (and dx, dgamma) come from the unweighted mean of the "
                             "replicas' moments"),
        explanation="BatchNorm(axis_name=...) combines replicas with lax.pmean of each device's mean(x, where=mask) "
                    "(and of its E[x^2] or E[(x - mu)^2]): every replica weighs 1/R, so replicas of unequal sizes "
                    "(padded and masked) get the mean of their means, not the mean of the union, and a variance "
                    "off accordingly (replicas of 6 and 2 samples around -5 and +5: mean -0.43 for -3.06, y off "
                    "by up to 0.9); the backward differentiates the same statistics",
        link=link)
    empty = Deviation(
        name=f"{prefix}-cross-replica-empty-replica-nan", kind="defect", applies=some_replica_empty,
        behaviour=Mismatches(("y", "running_mean", "running_var", "dx", "dgamma"),
                             "y, the running statistics (and dx, dgamma) are NaN on every replica"),
        explanation="an empty replica's mean(x, where=mask) over no element is 0/0 = NaN, and lax.pmean sums it into "
                    "every device's statistics: y and the running statistics are NaN everywhere, where the model lets "
                    "an empty replica contribute nothing",
        link=link)
    return unweighted, empty


# Cross-replica findings, re-verified on the replicas family's biased twins (flax keeps a biased
# running variance) and checked against a NumPy mean of means in tests/test_jax_replicas.py.
REPLICA_FINDINGS = {"flax.linen": flax_replica_deviations("flax", FLAX_NORMALIZATION_SOURCE),
                         "flax.nnx": flax_replica_deviations("nnx", NNX_NORMALIZATION_SOURCE)}
REPLICA_FINDINGS["flax.linen.exact_variance"] = REPLICA_FINDINGS["flax.linen"]


# A version sweep's JAX beside flax==X.Y (flax asks only for jax >= a floor, so the newest JAX would
# come with every old flax): the JAX release of the flax minor's era, jaxlib with it ([cpu]); other
# minors get the newest.
SWEEP_JAX = {(0, 10): "jax[cpu]==0.6.2", (0, 11): "jax[cpu]==0.7.1", (0, 12): "jax[cpu]==0.10.2"}


class FlaxAdapter(JaxAdapter):
    """What flax.linen and flax.nnx share: the flax distribution, ``JAX_CAPABILITIES`` as they are
    (flax has no Bessel, zero-debias or schedule option), and ``momentum`` weighing the old statistic."""

    @classmethod
    def sweep_requirements(cls, version: str) -> tuple[str, ...]:
        return (SWEEP_JAX.get(release(version)[:2], "jax[cpu]"),)

    framework = "flax"
    requires = ("jax", "flax")
    capabilities = JAX_CAPABILITIES
    decay_parameter = ("momentum", "old")
    speed_note = ("~0.7 ms per forward case: forward cases share a few input shapes and reuse their compiled program; "
                  "a gradient case compiles its own program per input shape and mode (~1.3 x a forward compile in "
                  "training, ~0.6 x in inference; ~30-60 ms from the persistent cache), which is its median")


def fast_variance_cancels(name: str, explanation: str, link: str) -> Deviation:
    """flax's ``use_fast_variance=True`` finding (linen and nnx share _compute_stats): Var = E[x^2] -
    E[x]^2 loses the digits E[x^2] and E[x]^2 share once |mean| is over 50 x the spread (constant
    channels are exact: the clamp at 0 absorbs the rounding). The backward differentiates the
    same formula, so dx and dgamma carry the error too (dbeta = sum(dy) does not)."""
    return Deviation(
        # Half inputs are excluded: flax reduces them in float32 (force_float32_reductions) and
        # judges y at half tolerances, which the float32 cancellation stays within at |mean| = 80 x
        # the spread (measured on formulas/{float16,bfloat16}_params_offset_train).
        name=name, kind="precision",
        applies=mean_far_from_spread(50, constant=False) & ~input_dtype_in("float16", "bfloat16"),
        behaviour=Mismatches(("y", "running_var", "dx", "dgamma"),
                             "y, running_var (and dx, dgamma) carry the cancellation error of E[x^2] - E[x]^2"),
        explanation=explanation, link=link)


def flax_state(case: Case, device) -> tuple[dict, dict]:
    """(params, running statistics) as flax names them: ``scale`` / ``bias`` for the affine parts
    the config uses, ``mean`` / ``var`` for the running statistics; on the device."""
    state = put_state(case, device)
    params = {}
    if case.config.scale:
        params["scale"] = state["gamma"]
    if case.config.center:
        params["bias"] = state["beta"]
    return params, {name: _flax_stat(state[f"running_{name}"]) for name in ("mean", "var")}


def _flax_stat(value):
    """A running statistic in the dtype flax keeps it: float32 for half params (linen's
    force_float32_reductions=True default and nnx create batch stats in float32 whatever
    param_dtype is, and linen's update promotes half ones to float32); others as given. Half
    values are exact in float32."""
    jnp = load_jax().numpy
    return value.astype(jnp.float32) if value.dtype in (jnp.float16, jnp.bfloat16) else value


def run_flax_steps(programs, key: tuple, case: Case, place) -> list[dict]:
    """Run the case through ``step_fn(params, stats, x, training, momentum, epsilon, mask) -> (y,
    stats after)``, keeping the returned statistics only where a step updates (flax is functional:
    discarding them is how a training step without an update is expressed). ``place`` (replicas.py)
    says where: one device, or R devices with the batch split (``mask``: the padding rows of unequal
    replicas, else None). A step with dy runs the :func:`differentiated` program, dy appended."""
    config = case.config
    params, stats = flax_state(case, place.at)
    decay, epsilon = float(config.running_stats.decay), float(config.effective_epsilon)
    results = []
    for step, (x, dy) in zip(case.steps, place.inputs(case)):
        cotangent = () if dy is None else (dy,)
        y, after, *grads = programs.for_step(key, place, step)(
            params, stats, x, step.is_training, decay, epsilon, place.mask, *cotangent)
        stats = after if step.update_running_stats else stats
        found = {"y": y, "running_mean": stats["mean"], "running_var": stats["var"]}
        if grads:
            dx, dparams = grads
            found.update(gradient_outputs(step, config, dx, dparams.get("scale"), dparams.get("bias")))
        results.append(place.mark(found))
    return place.gather(fetch(results))
