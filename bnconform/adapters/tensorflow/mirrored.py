"""Replicated steps on TensorFlow: ``tf.distribute.MirroredStrategy`` over R logical CPU devices.

What the synchronized Keras rows share (``keras_sync``: tf_keras SyncBatchNormalization;
``keras3_replicas``: Keras 3 BatchNormalization(synchronized=True)). A case's step splits its
batch into R consecutive replicas (``step.replica_sizes``, unequal and empty allowed): replica r
gets samples [n_0 + .. + n_{r-1}, .. + n_r) as its own tensor, created on its own device by
``strategy.experimental_distribute_values_from_function``; ``strategy.run`` calls the layer once
per replica (each in its replica context, where the layer all-reduces its moments), and y is the
per-replica outputs concatenated back in replica order, i.e. the original sample order.

The device count reported (``replicas``) is the number of distinct devices that hold the
per-replica outputs, checked against the strategy's ``num_replicas_in_sync``; a mismatch, or an
output whose batch is not its replica's size, raises instead of being reported.

Gradients (``run_replicated_vjp``, steps with an upstream dy): dy is split like x, and inside
``strategy.run`` each replica records its own call on a ``tf.GradientTape`` and differentiates its
loss L_r = reduce_sum(y_r * dy_r) w.r.t. its x_r and the layer's gamma / beta (the variables as that
replica sees them). The synchronized layer's moments come from ``ReplicaContext.all_reduce``, whose
registered gradient is itself an all-reduce (SUM), so every replica's backward combines the
cotangents of all replicas: dx_r is the derivative of the global loss L = sum_r L_r w.r.t. x_r,
which TensorFlow computes, not this module. dx is the replicas' dx_r concatenated in sample order
(checked like y). A replica's dgamma / dbeta is only dL_r / dgamma; the returned dgamma / dbeta are
``strategy.reduce(SUM)`` of them over the replicas, = dL / dgamma: what a data-parallel optimizer's
all-reduce SUM of the replicas' raw tape gradients applies. Nothing is divided by R (Keras'
compile / fit scales each replica's loss by 1 / R; no fit runs here). An empty replica runs the same
ops on its 0 samples (every replica must join each all-reduce, forward and backward).

Strategies are built once per R (the first R logical CPUs of ``common.logical_cpus()``), with the
default cross-device ops (RING collectives on CPU) and collective keys of their own; layers built
under a strategy's scope belong to it. Steps run eagerly: ``strategy.run`` inside a
tf.function would trace once per layer, shape and split (hundreds of ms for a few cases each).
"""

from __future__ import annotations

import functools

import numpy as np

from .common import LOGICAL_CPUS, logical_cpus, tf, to_numpy


@functools.lru_cache(maxsize=None)
def strategy(replicas: int):
    """A MirroredStrategy over the first ``replicas`` logical CPU devices."""
    devices = logical_cpus()
    if len(devices) < replicas:
        raise RuntimeError(f"Expected: at least {replicas} logical CPU devices (bnconform's tf() configures "
                           f"{LOGICAL_CPUS} before TensorFlow's runtime starts). Received: {len(devices)} "
                           f"(TensorFlow was started before bnconform could split the CPU)")
    # On CPUs the strategy all-reduces with RING collectives whose group keys start at
    # 1 + _collective_key_base: two strategies over different device sets (R = 2, then R = 4)
    # would both claim group 1 and the second aborts ("joining a group with size 4, but that group
    # has size 2"). TensorFlow's own tests (strategy_combinations) raise the base per strategy;
    # so does this, per R, on a subclass rather than on TensorFlow's class.
    keyed = type("MirroredStrategy", (tf().distribute.MirroredStrategy,), {"_collective_key_base": 100000 * replicas})
    return keyed(devices[:replicas])


def bounds(sizes) -> list[tuple[int, int]]:
    """[(start, stop)) of each replica's samples along axis 0."""
    ends = np.cumsum(sizes)
    return [(int(e - n), int(e)) for e, n in zip(ends, sizes)]


def distribute(mirrored, x: np.ndarray, sizes, dtype):
    """Per-replica tensors: replica r holds exactly its slice of ``x`` (possibly empty), on its device."""
    slices, devices = bounds(sizes), mirrored.extended.worker_devices

    def value(context):
        replica = context.replica_id_in_sync_group
        start, stop = slices[replica]
        # an eager constant lives on /CPU:0 whatever the scope; the identity copies it to the replica's device
        with tf().device(devices[replica]):
            return tf().identity(tf().constant(x[start:stop], dtype=dtype))

    return mirrored.experimental_distribute_values_from_function(value)


def replica_count(case) -> int:
    """R: validation makes every step of a replicated case split over the same number of replicas
    (the sizes may differ by step; each step passes its own to run_replicated)."""
    return len(case.steps[0].replica_sizes)


def run_replicated(mirrored, call, x: np.ndarray, sizes, dtype) -> tuple[np.ndarray, int]:
    """``call`` on every replica's slice; (y in the original sample order, devices that ran it)."""
    return gathered(mirrored, mirrored.run(call, args=(distribute(mirrored, x, sizes, dtype),)), sizes)


def gathered(mirrored, per_replica, sizes, name: str = "y") -> tuple[np.ndarray, int]:
    """A per-replica batch output (y or dx) concatenated in replica order, and the number of distinct
    devices holding it; raises unless replica r's part has n_r samples and each replica its own device."""
    outputs = mirrored.experimental_local_results(per_replica)
    got = [int(o.shape[0]) for o in outputs]
    if got != [int(n) for n in sizes]:
        raise RuntimeError(f"Expected: per-replica batches {list(sizes)} of {name}. Received: {got}")
    devices = {o.device for o in outputs}
    if len(devices) != mirrored.num_replicas_in_sync:
        raise RuntimeError(f"Expected: {name} on {mirrored.num_replicas_in_sync} distinct devices. "
                           f"Received: {sorted(devices)}")
    return np.concatenate([to_numpy(o) for o in outputs]), len(devices)


def replica_vjp(call, parameters, x, dy) -> tuple:
    """In one replica context: (y_r, dx_r, {name: dL_r / dvariable}) for L_r = reduce_sum(y_r * dy_r),
    y_r = call(x_r), by tf.GradientTape; ``parameters()`` gives {"dgamma": gamma, ...} (None entries
    skipped) as this replica reads them. The tape differentiates the layer's all-reduces too."""
    variables = {k: v for k, v in parameters().items() if v is not None}
    with tf().GradientTape(watch_accessed_variables=False) as tape:
        tape.watch([x, *variables.values()])
        y = call(x)
        loss = tf().reduce_sum(y * tf().cast(dy, y.dtype))
    dx, *grads = tape.gradient(loss, [x, *variables.values()])
    missing = [n for n, g in zip(["dx", *variables], [dx, *grads]) if g is None]
    if missing:
        raise RuntimeError(f"Expected: gradients dx, {', '.join(variables)}. Received: None for {missing}")
    return y, dx, dict(zip(variables, grads))


def run_replicated_vjp(mirrored, call, parameters, x: np.ndarray, dy: np.ndarray, sizes, dtype) -> tuple:
    """``replica_vjp`` in every replica on its slices of x and dy: (y, devices that ran it, {"dx": the
    replicas' dx_r in sample order, "dgamma" / "dbeta": strategy.reduce(SUM) of the replicas'
    gradients, flattened}), i.e. the VJP of the whole replicated step with cotangent dy."""
    args = (distribute(mirrored, x, sizes, dtype), distribute(mirrored, np.asarray(dy), sizes, dtype))
    y, dx, grads = mirrored.run(functools.partial(replica_vjp, call, parameters), args=args)
    (y, replicas), (dx, _) = gathered(mirrored, y, sizes), gathered(mirrored, dx, sizes, "dx")
    summed = {k: to_numpy(mirrored.reduce(tf().distribute.ReduceOp.SUM, g, axis=None)).reshape(-1)
              for k, g in grads.items()}
    return y, replicas, {"dx": dx, **summed}

