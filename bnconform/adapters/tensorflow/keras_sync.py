"""tf_keras ``layers.experimental.SyncBatchNormalization`` on R devices (cross-replica BN).

Row ``tf_keras.SyncBatchNormalization``: the layer (``BatchNormalizationBase(synchronized=True)``;
``BatchNormalization(synchronized=True)`` is the same code) built in a
``tf.distribute.MirroredStrategy`` over R logical CPU devices and called eagerly in every replica
context, each replica on its own samples (``mirrored``). Replicated cases only
(``unreplicated=False``): without a strategy the layer is plain non-fused BatchNormalization, the
``tf_keras.nonfused`` row.

Translation: as ``keras`` (axis, momentum = decay, epsilon = max(epsilon, epsilon_floor), scale,
center, dtype; gamma / beta / moving_* assigned in cross-replica context, which sets every
replica's copy); fused is forced off by ``synchronized``. Outputs: y, and running_mean /
running_var read in cross-replica context: the moving statistics are ``ON_READ`` variables with
``MEAN`` aggregation, so what a user (or a checkpoint) reads is the mean of the replicas' copies.
No batch moments are exposed.

What the layer does (``_sync_calculate_mean_and_var``): each replica sums x, x^2 and its count,
three ``all_reduce(SUM)``s combine them, mean = sum / count and variance = max(E[x^2] - E[x]^2, 0)
(``divide_no_nan``: 0 for an empty batch); every replica then updates its own copy of the moving
statistics with the global (biased) moments. Findings, declared below: the one-pass variance
cancels for |mean| >> spread (1e4 + N(0, 1): O(1) in float32, ~1e-8 relative in float64); under
MirroredStrategy the layer's zero-size guard (``_support_zero_size_input``) keeps an EMPTY
replica's copy unchanged, so the mean read across replicas folds in only (R - empty) / R of the
update (every replica empty: nothing changes, as the model says); float64 variables see momentum
through float32(1 - momentum), as on the unsynchronized non-fused path.

Gradients (training steps with an upstream dy; ``mirrored.run_replicated_vjp``): in every replica
context a tf.GradientTape records the layer call and differentiates L_r = reduce_sum(y_r * dy_r)
w.r.t. x_r, gamma and beta; the layer's three moment all-reduces are differentiated by TensorFlow
(the gradient of an all-reduce SUM is an all-reduce SUM), so dx is the derivative of the global
loss sum_r L_r. dgamma / dbeta are the replicas' gradients summed by strategy.reduce(SUM) (an
optimizer's all-reduce SUM of raw tape gradients; no 1 / R loss scaling as in Keras' fit). Only
``batch`` gradients are declared: the replicated cases with dy are training steps.

Capabilities: as tf_keras BatchNormalization's non-fused path (eps inside the sqrt, a biased
running variance, a constant-momentum EMA, training=True always updates), gradients through the
batch statistics, the ``replicas`` extension with R in {2, 4, 8} (``common.LOGICAL_CPUS``) and
every split: unequal and empty replicas are expressible (a replica's tensor may hold 0 samples).
"""

from __future__ import annotations

from dataclasses import replace

from ...judging.selectors import input_dtype_in, mean_far_from_spread, where
from ..base import Adapter, Deviation, Mismatches
from .common import LOGICAL_CPUS, TF_ENVIRONMENT, to_numpy, to_tf_dtype
from .keras_common import BN_SOURCE, LAYER_CAPABILITIES, float64_decay_deviation, layer_defaults, tensorflow_for, tf_keras
from .mirrored import replica_count, run_replicated, run_replicated_vjp, strategy

API = "tf_keras SyncBatchNormalization"
# Gradients through the synchronized batch statistics (training); no replicated case differentiates an eval step.
SYNC_GRADIENTS = frozenset({"batch"})
SYNC_CAPABILITIES = replace(LAYER_CAPABILITIES, extensions=frozenset({"replicas"}), gradients=SYNC_GRADIENTS, when=(),
                            replica_counts=frozenset(r for r in (2, 4, 8) if r <= LOGICAL_CPUS), unreplicated=False)


def one_pass_variance(api: str, source: str) -> Deviation:
    """E[x^2] - E[x]^2 from all-reduced sums, in the input's dtype (shared with Keras 3): the
    relative error of the variance is ~ u(dtype) (mean / spread)^2, beyond the tolerance from a
    ratio of ~50 (float32 and float64 alike: the tolerance scales with u(dtype) too)."""
    return Deviation(
        name="sync-one-pass-variance-cancels",
        kind="precision",
        applies=input_dtype_in("float32", "float64") & mean_far_from_spread(50, constant=False),
        behaviour=Mismatches(("y", "running_var"), "the variance loses its digits to cancellation (for 1e4 + "
                                                   "N(0, 1): y and running_var off by O(1) in float32, ~1e-8 "
                                                   "relative in float64)"),
        explanation=(f"{api} all-reduces sum(x) and sum(x^2) and takes max(E[x^2] - E[x]^2, 0) in the input "
                     "dtype, which cancels when |mean| >> spread (the unsynchronized path's tf.nn.moments is "
                     "two-pass)"),
        link=source)


@where("a training step that updates the running statistics while some replicas are empty and others are not")
def updates_with_an_empty_replica(case) -> bool:
    return any(s.is_training and s.update_running_stats and s.replica_sizes and 0 in s.replica_sizes
               and sum(s.replica_sizes) > 0 for s in case.steps)


EMPTY_REPLICA_DILUTES = Deviation(
    name="empty-replica-dilutes-moving-stats",
    kind="defect",
    applies=updates_with_an_empty_replica,
    behaviour=Mismatches(("running_mean", "running_var"),
                         "the moving statistics move by (R - empty) / R of the synchronized update"),
    explanation=("under MirroredStrategy _support_zero_size_input() is true, so _assign_moving_average leaves the "
                 "copy of a replica whose batch is empty unchanged; moving_mean / moving_variance are ON_READ "
                 "variables aggregated by MEAN, so the value read (and saved) averages that stale copy with the "
                 "updated ones, although the synchronized moments are the same on every replica"),
    link=BN_SOURCE)


# Findings of this row, re-verified on the replicas family's biased twins (its convention) and checked
# by hand-computed numbers in tests/test_keras_replicas.py.
FINDINGS = {
    "tf_keras.SyncBatchNormalization": (one_pass_variance(API, BN_SOURCE), EMPTY_REPLICA_DILUTES,
                                        float64_decay_deviation(API)),
}


class TfKerasSyncAdapter(Adapter):
    """``tf_keras.layers.experimental.SyncBatchNormalization`` in a MirroredStrategy over R logical CPUs."""

    name = "tf_keras.SyncBatchNormalization"
    framework = "tf_keras"
    extra = "tensorflow"
    requires = ("tensorflow", "tf_keras")
    device_kinds = ("cpu",)
    environment = TF_ENVIRONMENT  # shares the eager TensorFlow adapters' host (and its logical CPUs)
    decay_parameter = ("momentum", "old")
    capabilities = SYNC_CAPABILITIES
    notes = f"MirroredStrategy over R of {LOGICAL_CPUS} logical CPU devices, one replica's samples each; eager"
    speed_note = ("~60 ms CPU per case first pass, ~30 warm: eager strategy.run runs one thread per replica and "
                  "all-reduces three tensors; a tf.function would trace per layer, shape and split (each once here); "
                  "a gradient case ~200-260 ms first pass, ~35-130 warm: "
                  "the tape's eager backward all-reduces three cotangents again")
    deviations = FINDINGS["tf_keras.SyncBatchNormalization"]

    def __init__(self):
        self._layers = {}

    @classmethod
    def sweep_requirements(cls, version: str) -> tuple[str, ...]:
        return tensorflow_for(version)  # tf_keras X.Y runs on TensorFlow X.Y

    def devices(self):
        return ["cpu"]

    def framework_defaults(self):
        return layer_defaults(tf_keras().layers.experimental.SyncBatchNormalization)

    def run(self, case, device):
        mirrored = strategy(replica_count(case))
        layer = self._layer(case, mirrored)
        layer.momentum, layer.epsilon = case.config.running_stats.decay, case.config.effective_epsilon
        _assign_state(layer, case)
        return [self._step(mirrored, layer, case, step) for step in case.steps]

    def _step(self, mirrored, layer, case, step) -> dict:
        """One replicated call: y, the moving statistics read across replicas, ``replicas``; with dy
        also dx, dgamma, dbeta of the whole step (``run_replicated_vjp``)."""
        call = lambda x: layer(x, training=step.is_training)  # noqa: E731
        dtype = to_tf_dtype(case.config.input_dtype)
        if step.dy is None:  # forward only: no tape
            (y, replicas), grads = run_replicated(mirrored, call, step.x, step.replica_sizes, dtype), {}
        else:
            parameters = lambda: {"dgamma": layer.gamma, "dbeta": layer.beta}  # noqa: E731
            y, replicas, grads = run_replicated_vjp(mirrored, call, parameters, step.x, step.dy, step.replica_sizes,
                                                    dtype)
        return {"y": y, "running_mean": to_numpy(layer.moving_mean), "running_var": to_numpy(layer.moving_variance),
                "replicas": replicas, **grads}

    def _layer(self, case, mirrored):
        """One layer per (R, structure), built in the strategy's scope; decay and epsilon are set per case."""
        cfg = case.config
        key = (mirrored.num_replicas_in_sync, cfg.input_dtype, case.rank, cfg.channel_axis, case.channels,
               cfg.center, cfg.scale)
        if key not in self._layers:
            with mirrored.scope():
                layer = tf_keras().layers.experimental.SyncBatchNormalization(
                    axis=cfg.channel_axis, momentum=cfg.running_stats.decay, epsilon=cfg.effective_epsilon,
                    center=cfg.center, scale=cfg.scale, dtype=cfg.input_dtype)
                layer.build(case.steps[0].x.shape)
            self._layers[key] = layer
        return self._layers[key]


def _assign_state(layer, case) -> None:
    """Every replica's copy of gamma, beta and the moving statistics (cross-replica assign)."""
    state = case.initial_state
    for variable, values in ((layer.gamma, state.gamma), (layer.beta, state.beta),
                             (layer.moving_mean, state.running_mean), (layer.moving_variance, state.running_var)):
        if variable is not None:
            variable.assign(values)
