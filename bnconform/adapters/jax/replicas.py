"""Where a JAX-family step runs: on one device, or split over R host devices (cross-replica BN).

The JAX host starts with ``HOST_DEVICE_COUNT`` CPU devices (common.X64_ENVIRONMENT sets
``XLA_FLAGS=--xla_force_host_platform_device_count=8``). An unreplicated case runs on the first
device of its kind, as before (:class:`OneDevice`). A case whose steps carry ``replica_sizes``
runs on a ``jax.sharding.Mesh`` of R devices with the axis :data:`REPLICA_AXIS`
(:class:`Replicated`): the adapter builds its layer with that axis name (flax ``axis_name``, haiku
``cross_replica_axis``, equinox ``axis_name``) and runs the call under ``jax.shard_map``; the
library's own collectives (``lax.pmean``) combine the replicas' moments. Device r holds replica r's
samples only (x and dy sharded along axis 0), the parameters and running statistics are replicated,
y comes back sharded like x and is reassembled in the original order. A step reports ``replicas``:
the number of devices y's shards live on (:func:`ran_on`), not the number of sizes in the case.

shard_map needs equal shards. flax has a documented way to leave positions out of the statistics,
BatchNorm's ``mask``, so a flax adapter (``masked=True``) pads each replica to the largest with
masked rows, and drops those rows of y and dx again (:class:`Layout`); haiku and equinox have no
mask and declare equal splits only. Nothing else is ever padded.

Programs (:class:`Programs`): an adapter's ``build(*structural, static=None, mesh=None)`` returns
its pure step on one device (``mesh`` None) or replicated over ``mesh``; the replicated programs are
jitted per (structural knobs, device kind, R) beside the unreplicated ones, which stay as they were.
Gradients of a replicated step are ``jax.vjp`` of the whole replicated step (common.differentiated):
shard_map's transpose sums the replicated parameters' cotangents over the replicas.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ...caseformat.dtypes import numpy_dtype
from ...caseformat.model import Case
from ..base import Unsupported
from .common import (HOST_DEVICE_COUNT, HOST_DEVICES_FLAG, JitCache, case_replica_sizes, differentiated, gradient_cache,
                     jax_device, load_jax, put_inputs)

REPLICA_AXIS = "replicas"


@functools.lru_cache(maxsize=None)
def replica_mesh(kind: str, count: int):
    """A 1-D mesh of the first ``count`` devices of a kind, axis REPLICA_AXIS; Unsupported if
    JAX sees fewer (XLA_FLAGS must name the device count before JAX starts its CPU backend)."""
    jax = load_jax()
    devices = jax.devices("gpu" if kind == "cuda" else "cpu")
    if len(devices) < count:
        how = f" (the JAX host sets XLA_FLAGS={HOST_DEVICES_FLAG}={HOST_DEVICE_COUNT})" if kind == "cpu" else ""
        raise Unsupported(f"{count} replicas need {count} separate {kind} devices. Expected: >= {count} {kind} "
                          f"devices{how}. Received: {len(devices)}")
    return jax.sharding.Mesh(np.array(devices[:count]), (REPLICA_AXIS,))


def sharded(step: Callable, mesh, sharded_at: tuple[int, ...], check_vma: bool = True) -> Callable:
    """``step(*args) -> (y, *rest)`` under jax.shard_map over ``mesh``: the arguments at
    ``sharded_at`` split along axis 0 (one replica per device), the others replicated; y comes back
    split the same way, ``rest`` (the updated statistics) replicated. With ``check_vma`` shard_map
    checks that the library's collectives really made ``rest`` equal on every device."""
    jax = load_jax()
    spec, split = jax.sharding.PartitionSpec, jax.sharding.PartitionSpec(REPLICA_AXIS)

    def pair(*args):
        y, *rest = step(*args)
        return y, tuple(rest)

    def replicated(*args):
        in_specs = tuple(split if i in sharded_at else spec() for i in range(len(args)))
        y, rest = jax.shard_map(pair, mesh=mesh, in_specs=in_specs, out_specs=(split, spec()),
                                check_vma=check_vma)(*args)
        return (y, *rest)

    return replicated


def ran_on(y) -> int:
    """How many devices the step ran on: the distinct devices holding shards of its output y."""
    return len(y.sharding.device_set)


@dataclass(frozen=True)
class Layout:
    """Rows of the batch per replica. Equal sizes (or ``masked`` False) are the batch as is; unequal
    ones with ``masked`` are padded, replica r at rows [r * width, r * width + n_r), and the
    rows beyond n_r are masked out of the statistics (flax's ``mask``)."""

    sizes: tuple[int, ...]
    masked: bool

    @property
    def width(self) -> int:
        return max(self.sizes)

    @property
    def padded(self) -> bool:
        return self.masked and len(set(self.sizes)) > 1

    def rows(self) -> list[tuple[int, int, int]]:
        """(first row in the batch, first row on the device axis, count) per replica."""
        starts = np.cumsum((0,) + self.sizes[:-1])
        return [(int(s), r * self.width, n) for r, (s, n) in enumerate(zip(starts, self.sizes))]

    def scatter(self, x: np.ndarray) -> np.ndarray:
        if not self.padded:
            return x
        out = np.zeros((len(self.sizes) * self.width, *x.shape[1:]), dtype=x.dtype)
        for start, at, n in self.rows():
            out[at:at + n] = x[start:start + n]
        return out

    def gather(self, y: np.ndarray) -> np.ndarray:
        if not self.padded:
            return y
        return np.concatenate([y[at:at + n] for _, at, n in self.rows()])

    def mask(self, rank: int) -> np.ndarray | None:
        """True on the rows that hold samples, shaped to broadcast over x; None when unpadded."""
        if not self.padded:
            return None
        real = np.zeros(len(self.sizes) * self.width, dtype=bool)
        for _, at, n in self.rows():
            real[at:at + n] = True
        return real.reshape((-1,) + (1,) * (rank - 1))


class OneDevice:
    """An unreplicated case: state and inputs on the first device of the kind."""

    mesh = None
    mask = None

    def __init__(self, device: str):
        self.at = jax_device(device)

    def inputs(self, case: Case) -> list:
        return put_inputs(case, self.at)

    def mark(self, found: dict) -> dict:
        return found

    def gather(self, fetched: list[dict]) -> list[dict]:
        return fetched


class Replicated:
    """A replicated case on R devices: ``at`` (parameters, running statistics) is a copy on every
    device, the batch is split along axis 0 with replica r's rows on device r."""

    def __init__(self, case: Case, device: str, sizes: tuple[int, ...], masked: bool):
        if not masked and len(set(sizes)) > 1:  # capabilities keep such cases away; never pad silently
            raise Unsupported(f"shard_map needs equal shards. Expected: equal replica sizes. Received: {list(sizes)}")
        jax = load_jax()
        self.kind, self.count, self.layout = device, len(sizes), Layout(sizes, masked)
        self.mesh = replica_mesh(device, self.count)
        self.at = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        self.split = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(REPLICA_AXIS))
        self.mask = None if not self.layout.padded else jax.device_put(self.layout.mask(case.rank), self.split)

    def inputs(self, case: Case) -> list:
        """Every step's (x, dy), replica r's rows on device r, in one host-to-device transfer."""
        dtype = numpy_dtype(case.config.input_dtype)

        def rows(array):
            return None if array is None else self.layout.scatter(np.asarray(array, dtype=dtype))
        return load_jax().device_put([(rows(s.x), rows(s.dy)) for s in case.steps], self.split)

    def mark(self, found: dict) -> dict:
        return {**found, "replicas": ran_on(found["y"])}

    def gather(self, fetched: list[dict]) -> list[dict]:
        """y and dx back in the batch's order, without padding rows."""
        return [{**r, **{k: self.layout.gather(r[k]) for k in ("y", "dx") if k in r}} for r in fetched]


def placement(case: Case, device: str, masked: bool = False) -> OneDevice | Replicated:
    """Where the case runs: one device, or R devices when its steps are split over replicas."""
    sizes = case_replica_sizes(case)
    return OneDevice(device) if sizes is None else Replicated(case, device, sizes, masked)


class Programs:
    """An adapter's compiled steps: ``steps`` / ``gradient_steps`` on one device (keyed by the
    structural knobs, as before) and ``replica_steps`` / ``replica_gradient_steps`` replicated
    (keyed by (knobs, device kind, R)); each built on first use."""

    def __init__(self, build: Callable, x_at: int):
        self.steps = JitCache(build)
        self.gradient_steps = gradient_cache(build, x_at)

        def replicated(structural, kind, count, static=None):
            return build(*structural, static, replica_mesh(kind, count))

        self.replica_steps = JitCache(replicated)
        self.replica_gradient_steps = JitCache(lambda *key: differentiated(replicated(*key), x_at))

    def forward(self, key: tuple, place, *static) -> Callable:
        """The forward program (``static``: one mode only, else both behind lax.cond)."""
        if place.mesh is None:
            return self.steps.get(*key, *static)
        return self.replica_steps.get(key, place.kind, place.count, *static)

    def for_step(self, key: tuple, place, step) -> Callable:
        """The two-mode forward program without dy; with dy the differentiated one of its mode."""
        if step.dy is None:
            return self.forward(key, place)
        if place.mesh is None:
            return self.gradient_steps.get(*key, step.is_training)
        return self.replica_gradient_steps.get(key, place.kind, place.count, step.is_training)
