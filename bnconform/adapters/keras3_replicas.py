"""Keras 3 BatchNormalization on R devices: synchronized on TensorFlow, data-parallel on JAX.

Two rows, replicated cases only (``unreplicated=False``: one device's batch is the keras3.<backend>
row's). Both translate the knobs as ``keras3`` does (axis, momentum = decay, epsilon, scale,
center, dtype policy; variables assigned, momentum / epsilon set per case) and return y, the
moving statistics and ``replicas``, the number of distinct devices holding the step's output.

``keras3.tensorflow.synchronized`` -- ``BatchNormalization(synchronized=True)`` built in a
``tf.distribute.MirroredStrategy`` over R logical CPU devices and called eagerly in each replica
context on that replica's own samples (``tensorflow.mirrored``; unequal and empty replicas
expressible). The TensorFlow backend's ``moments(..., synchronized=True)``
(``_compute_moments_sync``) all-reduces sum(x), sum(x^2) and the count, then mean = sum / count,
variance = max(E[x^2] - E[x]^2, 0), both ``divide_no_nan``; every replica assigns
momentum * moving + (1 - momentum) * moment to the moving statistics (MirroredVariables).
Findings: the one-pass variance cancels for |mean| >> spread (as tf_keras'); an all-empty batch
has 0 / 0 -> 0 moments, which the update folds in (the moving statistics decay towards 0). An
empty replica beside full ones is harmless: it receives the same all-reduced moments and updates
its copy like the others. Gradients (training steps with ``dy``; ``gradients={"batch"}``):
``tensorflow.mirrored.run_replicated_vjp``, as tf_keras.SyncBatchNormalization's -- a
tf.GradientTape per replica context over the eager call, w.r.t. x_r and the tf.Variables behind
gamma / beta (as keras3.tensorflow), loss reduce_sum(y_r * dy_r); TensorFlow differentiates the
three moment all-reduces (their gradient is an all-reduce SUM), so dx is the gradient of the global
loss; dgamma / dbeta are strategy.reduce(SUM) of the replicas' gradients (no 1 / R scaling).

``keras3.jax.DataParallel`` -- ``synchronized=True`` is TensorFlow-only (the layer raises
ValueError on JAX); Keras 3's data-parallel path on JAX is ``keras.distribution.DataParallel``:
variables are replicated over a 1-D mesh of R devices and the batch is sharded along it. The
layer (``synchronized=False``) is built in the distribution's scope, and its ``stateless_call`` is
jitted (as Keras' trainer jits its steps) and called on one ``jax.Array`` laid out by the
distribution's data layout, whose shard on mesh device r is replica r's samples
(``make_array_from_single_device_arrays``). jax.numpy's mean / var of that global array are the
moments over every device (XLA's SPMD partitioner turns the reductions into per-device partial
sums and cross-device all-reduces), so BN is synchronized by construction, with the two-pass
``jnp.var``; the updated moving statistics are assigned back as the stateful call would. The
layout splits the batch evenly: only equal splits are expressible (``replica_splits={"equal"}``;
nothing is padded). The R devices are JAX's host platform devices, ``XLA_FLAGS=
--xla_force_host_platform_device_count`` in the JAX host's environment (``jax.common``).
Gradients (steps with ``dy``, training and inference; ``gradients`` as keras3.jax's): ``jax.vjp`` of
that same jitted ``stateless_call`` w.r.t. x and the trainable variables, cotangent dy sharded like x
(``_vjp_program``). JAX differentiates the global program -- y of the whole batch with its global
moments -- so the VJP is the gradient of the global loss sum(dy * y) over every sample, which the
cases define (for gamma / beta equivalently the sum over replicas of each replica's own gradient);
XLA partitions the backward like the forward, its sums of dy and dy * xhat becoming per-device
partial sums and all-reduces. dx comes back sharded like x (checked: shard r on mesh device r),
dgamma / dbeta replicated. Unequal splits stay inexpressible, as for the forward.

Conventions as ``keras3`` (biased running variance, plain EMA, training=True always updates);
``keras3.tensorflow.synchronized`` differentiates training steps only (no replicated case has an
eval step with dy).
"""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np

from ..judging.selectors import updates_on_empty_batch
from .base import Deviation, Mismatches, Unsupported
from .jax.common import X64_ENVIRONMENT
from .keras3 import KERAS3_CAPABILITIES, _dtype_policy, _Keras3Adapter, stateless_vjp
from .keras3_findings import FLOAT64_AS_FLOAT32, KERAS_BACKEND_SOURCE
from .tensorflow.common import LOGICAL_CPUS, TF_ENVIRONMENT, tf, to_numpy, to_tf_dtype
from .tensorflow.keras_sync import SYNC_GRADIENTS, one_pass_variance
from .tensorflow.mirrored import bounds, replica_count, run_replicated, run_replicated_vjp, strategy

REPLICATED = dict(extensions=frozenset({"replicas"}), unreplicated=False, gradients=frozenset())
TF_SOURCE = KERAS_BACKEND_SOURCE.format(backend="tensorflow")

ALL_EMPTY_DECAYS_TO_ZERO = Deviation(
    name="keras3-sync-empty-batch-zero-moments",
    kind="defect",
    applies=updates_on_empty_batch,
    behaviour=Mismatches(("running_mean", "running_var"), "the moving statistics are pulled towards 0 "
                                                          "(momentum * moving) instead of staying unchanged"),
    explanation=("_compute_moments_sync divides the all-reduced sums by the all-reduced count with divide_no_nan, "
                 "so an empty batch has mean 0 and variance 0, and call() folds them in with no N == 0 guard"),
    link=TF_SOURCE)


# Findings re-verified on the replicas family's biased twins (and, for JAX, its float64 equal split),
# and checked by hand-computed numbers in tests/test_keras_replicas.py.
FINDINGS = {
    "keras3.tensorflow.synchronized": (one_pass_variance("Keras 3 BatchNormalization(synchronized=True)", TF_SOURCE),),
    "keras3.jax.DataParallel": (FLOAT64_AS_FLOAT32,),
}


class _Keras3ReplicatedAdapter(_Keras3Adapter):
    """What both rows share with the keras3 rows (import and backend check, version, defaults,
    state loading), plus the layer built inside the replication scope."""

    device_kinds = ("cpu",)
    synchronized = False

    def devices(self):
        return ["cpu"]

    def _build(self, case):
        """The translated layer, built for the case's shape (call inside the replication scope)."""
        cfg = case.config
        layer = self.keras().layers.BatchNormalization(
            axis=cfg.channel_axis, momentum=cfg.running_stats.decay, epsilon=cfg.effective_epsilon,
            center=cfg.center, scale=cfg.scale, dtype=_dtype_policy(cfg), synchronized=self.synchronized)
        layer.build(case.steps[0].x.shape)
        return layer

    def _load(self, layer, case) -> None:
        """Case state into the variables (every device's copy); momentum / epsilon are plain floats
        that call() reads, so one built layer serves every decay and epsilon."""
        layer.momentum, layer.epsilon = float(case.config.running_stats.decay), float(case.config.effective_epsilon)
        self._assign_state(layer, case)

    @staticmethod
    def _key(case, replicas: int) -> tuple:
        cfg = case.config
        return (replicas, cfg.input_dtype, cfg.param_dtype, case.rank, cfg.channel_axis, case.channels, cfg.center,
                cfg.scale)


class Keras3TensorflowSyncAdapter(_Keras3ReplicatedAdapter):
    """keras.layers.BatchNormalization(synchronized=True) in a MirroredStrategy over R logical CPUs."""

    name = "keras3.tensorflow.synchronized"
    backend = "tensorflow"
    extra = "tensorflow"
    requires = ("tensorflow", "keras")
    environment = TF_ENVIRONMENT  # shares the TensorFlow adapters' host (and its logical CPUs)
    synchronized = True
    capabilities = replace(KERAS3_CAPABILITIES, **{**REPLICATED, "gradients": SYNC_GRADIENTS},
                           replica_counts=frozenset(r for r in (2, 4, 8) if r <= LOGICAL_CPUS))
    deviations = (ALL_EMPTY_DECAYS_TO_ZERO,) + FINDINGS["keras3.tensorflow.synchronized"]
    notes = (f"synchronized=True; MirroredStrategy over R of {LOGICAL_CPUS} logical CPU devices, one replica's "
             "samples each")
    speed_note = ("~50 ms CPU per case first pass, ~25 warm: eager strategy.run runs one thread per replica and "
                  "all-reduces three tensors; a tf.function would trace per layer, shape and split (each once here); "
                  "a gradient case ~60-120 ms first pass, ~45-120 warm: "
                  "the tape's eager backward all-reduces three cotangents again")

    def keras(self):
        tf()  # TensorFlow first, so its CPU is split into logical devices before Keras starts the runtime
        return super().keras()

    def run(self, case, device):
        mirrored = strategy(replica_count(case))
        key = self._key(case, mirrored.num_replicas_in_sync)
        if key not in self._layers:
            with mirrored.scope():
                self._layers[key] = self._build(case)
        layer, dtype = self._layers[key], to_tf_dtype(case.config.input_dtype)
        self._load(layer, case)
        return [self._replicated_step(mirrored, layer, step, dtype) for step in case.steps]

    def _replicated_step(self, mirrored, layer, step, dtype) -> dict:
        """One replicated call: y, the moving statistics, ``replicas``; with dy also dx, dgamma, dbeta
        of the whole step (``run_replicated_vjp``, w.r.t. the tf.Variables behind gamma / beta)."""
        call = lambda x: layer(x, training=step.is_training)  # noqa: E731
        if step.dy is None:  # forward only: no tape
            (y, replicas), grads = run_replicated(mirrored, call, step.x, step.replica_sizes, dtype), {}
        else:
            parameters = lambda: {k: v.value for k, v in self._parameters(layer).items()}  # noqa: E731
            y, replicas, grads = run_replicated_vjp(mirrored, call, parameters, step.x, step.dy, step.replica_sizes,
                                                    dtype)
        return {"y": y, "running_mean": to_numpy(layer.moving_mean.value),
                "running_var": to_numpy(layer.moving_variance.value), "replicas": replicas, **grads}


class Keras3JaxDataParallelAdapter(_Keras3ReplicatedAdapter):
    """keras.layers.BatchNormalization under keras.distribution.DataParallel over R JAX CPU devices."""

    name = "keras3.jax.DataParallel"
    backend = "jax"
    extra = "jax"
    requires = ("jax", "keras")
    environment = X64_ENVIRONMENT  # shares the JAX family's host (x64, host platform devices)
    capabilities = replace(KERAS3_CAPABILITIES, **{**REPLICATED, "gradients": KERAS3_CAPABILITIES.gradients},
                           replica_splits=frozenset({"equal"}), replica_counts=frozenset({2, 4, 8}))
    deviations = FINDINGS["keras3.jax.DataParallel"]
    notes = ("keras.distribution.DataParallel over R JAX CPU devices: the batch sharded evenly, one replica's "
             "samples per device; moments of the global array (synchronized=True is TensorFlow-only)")
    speed_note = ("~130 ms CPU per case first pass (one jitted SPMD program per layer, mode and shape; the eager "
                  "call compiles each op per sharded shape, ~2.5x that), ~2 ms warm; a gradient step is one jitted "
                  "forward+VJP SPMD program (~350 ms first pass)")

    def run(self, case, device):
        replicas = replica_count(case)
        distribution = self._distribution(replicas)
        key = self._key(case, replicas)
        with distribution.scope():
            if key not in self._layers:
                self._layers[key] = self._build(case)
            layer = self._layers[key]
            self._load(layer, case)
            return [self._step(layer, distribution, step) for step in case.steps]

    def _step(self, layer, distribution, step) -> dict:
        x, sizes = _sharded(step.x, step.replica_sizes, distribution), step.replica_sizes
        trainable, stats = layer.trainable_variables, layer.non_trainable_variables
        weights, values = [v.value for v in trainable], [v.value for v in stats]
        mesh_devices = _jax_mesh(distribution.device_mesh).devices.tolist()
        if step.dy is None:  # forward only: no VJP
            (y, updated), grads = self._program(layer, step.is_training)(x, weights, values), {}
        else:
            dy = _sharded(np.asarray(step.dy, dtype=step.x.dtype), sizes, distribution)
            y, dx, dweights, updated = self._vjp_program(layer, step.is_training)(x, weights, values, dy)
            grads = _gradients(self._parameters(layer), trainable, dx, dweights, sizes, mesh_devices)
        for variable, value in zip(stats, updated):  # what the stateful call would have assigned
            variable.assign(value)
        return {"y": np.asarray(y), "running_mean": np.asarray(layer.moving_mean.value),
                "running_var": np.asarray(layer.moving_variance.value),
                "replicas": _devices_holding(y, sizes, mesh_devices), **grads}

    def _program(self, layer, training: bool):
        """jit(layer.stateless_call) per layer, mode, momentum and epsilon (plain floats call() reads,
        so a trace bakes them in), as Keras' trainer jits its steps. The eager call compiles every op
        for each sharded shape instead: ~0.4 s per new shape against ~0.17 s for the one program."""
        import jax

        key = (id(layer), training, layer.momentum, layer.epsilon)
        if key not in self._programs:
            self._programs[key] = jax.jit(lambda x, weights, stats: layer.stateless_call(weights, stats, x,
                                                                                        training=training))
        return self._programs[key]

    def _vjp_program(self, layer, training: bool):
        """jit(forward + jax.vjp) of ``layer.stateless_call`` w.r.t. x and the trainable variables,
        cotangent dy, per layer, mode, momentum and epsilon (keras3.jax's program, here on sharded
        x and dy): XLA partitions the forward, its cross-device all-reduces and their transposes."""

        key = ("vjp", id(layer), training, layer.momentum, layer.epsilon)
        if key not in self._programs:
            self._programs[key] = stateless_vjp(layer, training)
        return self._programs[key]

    @functools.lru_cache(maxsize=None)
    def _distribution(self, replicas: int):
        keras = self.keras()
        found = keras.distribution.list_devices("cpu")
        if len(found) < replicas:  # the user's own XLA_FLAGS named fewer (as jax.replicas' meshes say)
            raise Unsupported(f"{replicas} replicas need {replicas} separate cpu devices. Expected: >= {replicas} "
                              f"JAX CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count, which the JAX "
                              f"host's environment sets). Received: {len(found)}")
        return keras.distribution.DataParallel(devices=found[:replicas])


def _jax_mesh(device_mesh):
    """The jax.sharding.Mesh of a Keras DeviceMesh (``backend_mesh``; Keras before 3.10, a version
    sweep's, converts with the jax backend's ``_to_jax_mesh``)."""
    if hasattr(device_mesh, "backend_mesh"):
        return device_mesh.backend_mesh
    from keras.src.backend.jax.distribution_lib import _to_jax_mesh

    return _to_jax_mesh(device_mesh)


def _jax_layout(layout):
    """The jax.sharding.NamedSharding of a Keras TensorLayout (``backend_layout``; older Keras as above)."""
    if hasattr(layout, "backend_layout"):
        return layout.backend_layout
    from keras.src.backend.jax.distribution_lib import _to_jax_layout

    return _to_jax_layout(layout)


def _sharded(x: np.ndarray, sizes, distribution):
    """One jax.Array laid out as Keras' DataParallel lays out a batch (``get_data_layout``: axis 0
    split over the mesh), built from per-device pieces: the device of mesh position r receives
    replica r's samples and nothing else."""
    import jax

    if len(set(sizes)) != 1:
        raise Unsupported(f"DataParallel splits the batch evenly over the mesh. Expected: equal replica sizes. "
                          f"Received: {list(sizes)}")
    sharding = _jax_layout(distribution.get_data_layout(x.shape))
    placement = sharding.addressable_devices_indices_map(x.shape)  # device -> its slice of x
    pieces = [jax.device_put(x[index], device) for device, index in placement.items()]
    return jax.make_array_from_single_device_arrays(x.shape, sharding, pieces)


def _gradients(parameters: dict, trainable: list, dx, dweights, sizes, mesh_devices) -> dict:
    """{"dx", "dgamma", "dbeta"} as numpy: dx (whole batch) checked to lie as x does, mesh position r
    holding replica r's rows; dgamma / dbeta picked from the trainable variables' cotangents by
    identity (``parameters``: the layer's {"dgamma": gamma, "dbeta": beta} present)."""
    _devices_holding(dx, sizes, mesh_devices, "dx")
    position = {id(v): i for i, v in enumerate(trainable)}
    return {"dx": np.asarray(dx), **{k: np.asarray(dweights[position[id(v)]]) for k, v in parameters.items()}}


def _devices_holding(y, sizes, mesh_devices, name: str = "y") -> int:
    """How many distinct devices hold y (or dx, ``name``), checking that mesh position r holds
    replica r's rows and nothing else (else raise)."""
    rows = sorted(((s.index[0].start or 0, s.index[0].stop), s.device) for s in y.addressable_shards)
    expected = list(zip(bounds(sizes), mesh_devices))
    if rows != expected:
        raise RuntimeError(f"Expected: {name}'s shards (rows, device) {expected}. Received: {rows}")
    return len({device for _, device in rows})
