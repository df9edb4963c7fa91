"""Exported artifacts kept on disk between runs: what a converter wrote (an ONNX file, a LiteRT
flatbuffer, an OpenVINO IR) for one model and state, so a later run feeds the same bytes to the
runtime instead of converting again.

An exported row converts once per graph, or once per state where the converter freezes the state
into constants (0.1-3 s each, most of those rows' time); the runtime then runs the artifact in
milliseconds. The key is a SHA-256 of everything the conversion reads:

* the row and :data:`FORMAT` (this file's layout);
* the installed versions of the distributions that convert (the framework, the converter and
  what it calls: a new exporter is a new key) and Python's;
* the recipe: the source text of the functions that build the model and call the converter (a
  changed export call is a new key);
* the subject: the model's structure without its generated names (layer names depend on how many
  layers a process built before) and every state array's bytes.

A hit therefore hands the runtime the bytes the converter wrote for that input, as the JAX and
tinygrad caches do for compiled programs (execution/controller.py, tinygrad/program_cache.py):
what is judged is what the converter makes of that model, converted in an earlier run.
Refusals are not stored: a conversion that raises raises again in every run.

The folder is ``$BNCONFORM_EXPORT_CACHE``, else ``$XDG_CACHE_HOME/bnconform/exports``, else
``~/.cache/bnconform/exports``; ``BNCONFORM_EXPORT_CACHE=off`` converts every time (a run that
re-measures the converters themselves). Files are written whole and renamed into place, so hosts
and xdist workers share the folder; a folder that cannot be read or written costs only the
conversion. :data:`COUNTS` tallies this process's reuses and conversions (``bnconform bench``).
"""

from __future__ import annotations

import collections
import hashlib
import importlib.metadata
import inspect
import sys
from pathlib import Path
from typing import Callable, Iterable

from .environment import cache_folder as environment_cache_folder
from .environment import store_atomically

FORMAT = "bnconform-export-cache-1"
COUNTS: collections.Counter = collections.Counter()  # "reused" / "converted" in this process


def cache_folder() -> Path | None:
    """The folder artifacts are kept in, or None where ``BNCONFORM_EXPORT_CACHE`` is off / 0 / no."""
    return environment_cache_folder("BNCONFORM_EXPORT_CACHE", "exports")


def versions(distributions: Iterable[str]) -> str:
    """``name==version`` of each installed distribution (``name==absent`` if it is not), and Python's."""
    found = []
    for name in distributions:
        try:
            found.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name}==absent")
    return ";".join(found + [f"python=={sys.version.split()[0]}"])


def recipe(*functions: Callable) -> str:
    """The source text of the functions that build and convert (a changed call is a new key)."""
    return "\n".join(f"{f.__module__}.{f.__qualname__}\n{inspect.getsource(f)}" for f in functions)


def artifact_key(row: str, distributions: Iterable[str], how: str, subject: bytes) -> str:
    """SHA-256 (hex) of :data:`FORMAT`, the row, the :func:`versions` of ``distributions``, the
    recipe text ``how`` and the ``subject`` bytes (structure without names, then state)."""
    digest = hashlib.sha256()
    for part in (FORMAT, row, versions(distributions), how):
        digest.update(part.encode() + b"\0")
    digest.update(subject)
    return digest.hexdigest()


def cached_artifact(row: str, distributions: Iterable[str], how: str, subject: bytes,
                    convert: Callable[[], bytes]) -> bytes:
    """The artifact for this key: read from the cache folder, or ``convert()``-ed and stored there.
    An exception from ``convert`` propagates and nothing is stored."""
    folder = cache_folder()
    if folder is None:
        COUNTS["converted"] += 1
        return convert()
    key = artifact_key(row, distributions, how, subject)
    path = folder / row / key[:2] / f"{key}.bin"
    try:
        data = path.read_bytes()
        COUNTS["reused"] += 1
        return data
    except OSError:
        pass
    data = convert()
    COUNTS["converted"] += 1
    store_atomically(path, data)
    return data


def pack(parts: Iterable[bytes]) -> bytes:
    """Several byte strings as one (each with an 8-byte length) for artifacts made of files."""
    return b"".join(len(p).to_bytes(8, "little") + p for p in parts)


def unpack(data: bytes) -> list[bytes]:
    """The byte strings :func:`pack` joined."""
    parts, at = [], 0
    while at < len(data):
        size = int.from_bytes(data[at:at + 8], "little")
        parts.append(data[at + 8:at + 8 + size])
        at += 8 + size
    return parts
