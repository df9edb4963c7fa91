"""Where adapters come from: a sorted table of lazy dotted paths, entry points, or ad hoc paths.

* Built-in adapters: ``BUILTIN`` below (name -> "module:Class"); nothing is imported until used.
* Third-party adapters: the entry-point group ``bnconform.adapters`` (name -> "module:Class").
* Ad hoc: ``--adapter package.module:ClassName`` on the CLI and in pytest. Selecting one
  registers it for this process under the class's own ``name`` (:func:`register_adhoc`), so its
  cells, results and pytest ids all read ``NAME``, never the path.
* Executables in any language (docs/protocol.md): ``exec:FOLDER`` or ``exec:FOLDER#NAME`` wherever
  a "module:Class" path goes, FOLDER holding a ``bnconform-backend.json`` manifest; the built-in
  ones live in the repository's ``backends/`` folder (a wheel ships a copy).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
import sys
from pathlib import Path

from ..caseformat.shipped_data import shipped_backends
from .base import Adapter

ENTRY_POINT_GROUP = "bnconform.adapters"
BACKENDS = shipped_backends()  # executables speaking docs/protocol.md (a checkout's backends/, or a wheel's copy)

BUILTIN = {
    "c.reference": f"exec:{BACKENDS / 'c_reference'}",
    "equinox.batch": "bnconform.adapters.jax.equinox:EquinoxBatchModeAdapter",
    "equinox.ema": "bnconform.adapters.jax.equinox:EquinoxEmaAdapter",
    "flax.linen": "bnconform.adapters.jax.flax_linen:FlaxLinenAdapter",
    "flax.linen.exact_variance": "bnconform.adapters.jax.flax_linen:FlaxLinenExactVarianceAdapter",
    "flax.nnx": "bnconform.adapters.jax.flax_nnx:FlaxNnxAdapter",
    "haiku": "bnconform.adapters.jax.haiku:HaikuAdapter",
    "keras3.jax": "bnconform.adapters.keras3:Keras3JaxAdapter",
    "keras3.jax+jit_compile": "bnconform.adapters.keras3_compiled:Keras3JaxJitAdapter",
    "keras3.jax.DataParallel": "bnconform.adapters.keras3_replicas:Keras3JaxDataParallelAdapter",
    "keras3.tensorflow": "bnconform.adapters.keras3:Keras3TensorflowAdapter",
    "keras3.tensorflow+jit_compile": "bnconform.adapters.keras3_compiled:Keras3TensorflowJitAdapter",
    "keras3.tensorflow.synchronized": "bnconform.adapters.keras3_replicas:Keras3TensorflowSyncAdapter",
    "keras3.torch": "bnconform.adapters.keras3:Keras3TorchAdapter",
    "mindspore.nn": "bnconform.adapters.mindspore.nn:MindSporeBatchNormAdapter",
    "mlx.nn": "bnconform.adapters.mlx.nn:MlxBatchNormAdapter",
    "numpy.oracle": "bnconform.adapters.numpy_oracle:OracleAdapter",
    "paddle.functional": "bnconform.adapters.paddle.functional:PaddleFunctionalAdapter",
    "paddle.nn": "bnconform.adapters.paddle.nn:PaddleLayerAdapter",
    "paddle.use_global_stats": "bnconform.adapters.paddle.functional:PaddleGlobalStatsAdapter",
    "tensorlayer": "bnconform.adapters.tensorflow.legacy_wrappers:TensorLayerAdapter",
    "tf.fused_batch_norm": "bnconform.adapters.tensorflow.fused:TfFusedBatchNormAdapter",
    "tf.global_normalization": "bnconform.adapters.tensorflow.global_norm:TfGlobalNormalizationAdapter",
    "tf.nn": "bnconform.adapters.tensorflow.nn:TfNnAdapter",
    "tf.nn+ema": "bnconform.adapters.tensorflow.ema:TfEmaAdapter",
    "tf.v1.layers": "bnconform.adapters.tensorflow.v1_layers:TfV1LayersAdapter",
    "tf_keras.SyncBatchNormalization": "bnconform.adapters.tensorflow.keras_sync:TfKerasSyncAdapter",
    "tf_keras.auto": "bnconform.adapters.tensorflow.keras:TfKerasAutoAdapter",
    "tf_keras.auto+litert": "bnconform.adapters.tensorflow.export_litert:TfKerasLiteRtAdapter",
    "tf_keras.auto+tf2onnx": "bnconform.adapters.tensorflow.export_tf2onnx:TfKerasTf2OnnxAdapter",
    "tf_keras.auto+tf.function": "bnconform.adapters.tensorflow.compiled:TfKerasAutoGraphAdapter",
    "tf_keras.auto+xla": "bnconform.adapters.tensorflow.compiled:TfKerasAutoXlaAdapter",
    "tf_keras.backend": "bnconform.adapters.tensorflow.keras:TfKerasBackendAdapter",
    "tf_keras.fused": "bnconform.adapters.tensorflow.keras:TfKerasFusedAdapter",
    "tf_keras.nonfused": "bnconform.adapters.tensorflow.keras:TfKerasNonFusedAdapter",
    "tf_slim": "bnconform.adapters.tensorflow.slim:TfSlimAdapter",
    "tf_slim+compat": "bnconform.adapters.tensorflow.slim:TfSlimCompatAdapter",
    "tfjs.batchNorm": f"exec:{BACKENDS / 'tfjs'}#tfjs.batchNorm",
    "tfjs.layers": f"exec:{BACKENDS / 'tfjs'}#tfjs.layers",
    "tflearn": "bnconform.adapters.tensorflow.legacy_wrappers:TflearnAdapter",
    "tinygrad.nn": "bnconform.adapters.tinygrad.nn:TinygradBatchNormAdapter",
    "torch.functional": "bnconform.adapters.torch.functional:TorchFunctionalAdapter",
    "torch.functional+compile": "bnconform.adapters.torch.compiled:TorchCompiledFunctionalAdapter",
    "torch.gloo_sync": "bnconform.adapters.torch.gloo_sync:TorchGlooSyncAdapter",
    "torch.nn": "bnconform.adapters.torch.nn:TorchModuleAdapter",
    "torch.nn+compile": "bnconform.adapters.torch.compiled:TorchCompiledModuleAdapter",
    "torch.nn+folded": "bnconform.adapters.torch.folded:TorchFoldedAdapter",
    "torch.nn+onnx": "bnconform.adapters.torch.export_onnx:TorchOnnxAdapter",
    "torch.nn+onnx.dynamo": "bnconform.adapters.torch.export_onnx:TorchOnnxDynamoAdapter",
    "torch.nn+openvino": "bnconform.adapters.torch.export_openvino:TorchOpenVinoAdapter",
    "torch.nn.SyncBatchNorm": "bnconform.adapters.torch.gloo_sync:TorchSyncBatchNormAdapter",
}


class RegistryError(LookupError):
    """An adapter name or path that cannot be resolved; str() is the one line to show."""


_ADHOC: dict[str, str] = {}  # name -> path of the ad hoc adapters this process selected


@functools.lru_cache(maxsize=1)
def _entry_points() -> dict[str, str]:
    """The plug-ins' entry points, read once per process: reading the installed distributions'
    metadata costs ~7 ms, and a report resolves every adapter several times."""
    found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    return {ep.name: ep.value for ep in found}


def known() -> dict[str, str]:
    """Every resolvable name -> "module:Class", built-ins first, plug-ins after, sorted."""
    table = dict(sorted(BUILTIN.items()))
    for name, value in sorted(_entry_points().items()):
        table.setdefault(name, value)
    return table


def load_class(target: str) -> type[Adapter]:
    """Import "package.module:ClassName" and check it is an Adapter subclass (or read the manifest
    of "exec:FOLDER[#NAME]")."""
    if target.startswith("exec:"):
        from .exec_backend import ManifestError, adapter_class

        try:
            return adapter_class(target)
        except ManifestError as exc:
            raise RegistryError(str(exc)) from None
    module_name, _, class_name = target.partition(":")
    if not module_name or not class_name:
        raise RegistryError(f"--adapter: Expected: package.module:ClassName. Received: {target!r}")
    if os.getcwd() not in sys.path:  # ad hoc adapters live beside the user, as with `python -m`
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or a module broken mid-edit raising anything at import
        first = (str(exc).splitlines() or [""])[0]
        raise RegistryError(f"{target}: Expected: an importable module. Received: {type(exc).__name__}: {first}") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Adapter)):
        raise RegistryError(f"{target}: Expected: a subclass of bnconform.adapters.Adapter. Received: {cls!r}")
    if "name" not in vars(cls) or not cls.name:  # an inherited name would merge its verdicts with the parent's
        raise RegistryError(f"{target}: Expected: a class attribute `name` of its own. Received: "
                            f"{'inherited ' + repr(cls.name) if cls.name else 'no name'}")
    return cls


def resolve(name_or_path: str) -> type[Adapter]:
    """An adapter class from a registered name, the name of a selected ad hoc adapter, or an ad hoc
    "module:Class" path."""
    table = known()
    if name_or_path in table:
        return load_class(table[name_or_path])
    if name_or_path in _ADHOC:
        return load_class(_ADHOC[name_or_path])
    if ":" in name_or_path:
        return load_class(name_or_path)
    raise RegistryError(f"unknown backend {name_or_path!r}. Expected: one of {', '.join(table)}, "
                        f"or package.module:ClassName")


def register_adhoc(path: str) -> str:
    """Load the ad hoc adapter at ``path`` and return its class's ``name``, under which
    :func:`resolve` and :func:`target_of` find it from now on in this process. A RegistryError
    (one line) when the name is already taken by a registered backend or another ad hoc path:
    two adapters under one name would merge their cells."""
    name = load_class(path).name
    taken = known().get(name) or _ADHOC.get(name)
    if taken is not None and _same_target(taken, path):
        return name
    if taken is not None:
        raise RegistryError(f"{path}: Expected: an adapter whose `name` no other backend uses. Received: "
                            f"name {name!r}, which is already {taken}")
    _ADHOC[name] = path
    return name


def _same_target(a: str, b: str) -> bool:
    """Two paths naming one adapter (an exec: folder may be written relative or absolute)."""
    if a.startswith("exec:") and b.startswith("exec:"):
        (folder_a, _, row_a), (folder_b, _, row_b) = a[5:].partition("#"), b[5:].partition("#")
        return Path(folder_a).resolve() == Path(folder_b).resolve() and row_a == row_b
    return a == b


def adhoc_target(name: str) -> str | None:
    """The path of an ad hoc adapter selected in this process under ``name`` (None otherwise)."""
    return _ADHOC.get(name)


def target_of(name_or_path: str) -> str:
    """The "module:Class" path for a name (what a worker process imports)."""
    return known().get(name_or_path) or _ADHOC.get(name_or_path, name_or_path)
