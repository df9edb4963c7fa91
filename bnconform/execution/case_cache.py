"""Parsed case files kept between processes, so a matrix run reads and checks each file once.

A run loads every case file in every process that judges or plans cells: each pytest-xdist
worker at collection and every host process (one per framework environment, ~20 in the whole
matrix), ~1 ms a file of JSON parsing, schema and meaning checks and array decoding each time.
:func:`load_case` keeps the result of :func:`bnconform.caseformat.validation.load_case` -- the
checked :class:`~bnconform.caseformat.model.Case` -- pickled under ``user_cache("cases")``, keyed
by the SHA-256 of the file's bytes and of what could change the result of reading them: the
source of the case-format package, and the Python, NumPy and ml_dtypes versions that pickle the
arrays. A kept case is therefore exactly what reading that file with this code gives (~0.1 ms
to read back). Only valid files are kept; an invalid or oversized file goes through the checks
and fails with their one line every time. An unreadable or unwritable cache folder, or a kept
file that does not unpickle to a Case, falls back to reading the case file.
``BNCONFORM_CASE_CACHE=off`` turns it off.

The fuzzer, the benchmark and the tests read case files of their own, so the folder is bounded:
a process that keeps a new case first counts the kept files (once), and above ``MAX_KEPT``
removes the least recently used (a read-back touches its file) down to 80 % of it; ~6 KB a case.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import pickle
import sys
from dataclasses import replace
from pathlib import Path

from ..adapters.environment import cache_folder, store_atomically
from ..caseformat import validation
from ..caseformat.bounded_input import size_problem
from ..caseformat.model import Case

MAX_KEPT = 5000  # kept cases (~30 MB); the shipped matrix needs one per case file (549 today)
_PRUNED: set[Path] = set()  # folders this process has already bounded


def folder() -> Path | None:
    """Where kept cases live: ``$BNCONFORM_CASE_CACHE``, else ``user_cache("cases")``; None when off."""
    return cache_folder("BNCONFORM_CASE_CACHE", "cases")


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> bytes:
    """SHA-256 over the case-format package's files (its sources and schema.json) and the
    versions of Python, NumPy and ml_dtypes: what reading and pickling a case depends on."""
    import ml_dtypes
    import numpy

    package = Path(validation.__file__).parent
    digest = hashlib.sha256(f"{sys.version}|{numpy.__version__}|{ml_dtypes.__version__}".encode())
    for source in sorted(package.glob("*.py")) + [package / "schema.json"]:
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return digest.digest()


def load_case(path) -> Case:
    """:func:`bnconform.caseformat.validation.load_case` of ``path``, read back from the cache when
    this file's bytes were read before by the same code (CaseError, as there, for a bad file)."""
    path, where = Path(path), folder()
    data = _bytes_if_small(path) if where is not None else None
    if data is None:
        return validation.load_case(path)
    key = hashlib.sha256(code_fingerprint() + data).hexdigest()
    kept = _read_kept(where / key[:2] / f"{key}.pickle")
    if kept is not None:
        return kept if kept.path == str(path) else replace(kept, path=str(path))
    case = validation.load_case(path)
    _bound(where)
    _keep(where / key[:2] / f"{key}.pickle", case)
    return case


def _bound(where: Path) -> None:
    """Once per process and folder: above MAX_KEPT kept cases, remove the least recently used
    down to 80 % of it (another process removing the same files at once is harmless)."""
    if where in _PRUNED:
        return
    _PRUNED.add(where)
    try:
        kept = [(entry.stat().st_mtime, entry.path) for sub in os.scandir(where) if sub.is_dir()
                for entry in os.scandir(sub.path) if entry.name.endswith(".pickle")]
    except OSError:
        return
    if len(kept) <= MAX_KEPT:
        return
    for _, stale in sorted(kept)[:len(kept) - int(MAX_KEPT * 0.8)]:
        Path(stale).unlink(missing_ok=True)


def _bytes_if_small(path: Path) -> bytes | None:
    """The file's bytes, or None where the checks must speak (unreadable, oversized)."""
    try:
        if size_problem(path.stat().st_size, what="a case file"):
            return None
        return path.read_bytes()
    except OSError:
        return None


def _read_kept(kept: Path) -> Case | None:
    """The kept case, its file touched as recently used; None if absent, damaged or foreign."""
    try:
        case = pickle.loads(kept.read_bytes())
    except Exception:  # noqa: BLE001 (absent, truncated or foreign: read the case file instead)
        return None
    with contextlib.suppress(OSError):  # a read-only cache still serves its cases
        os.utime(kept)
    return case if isinstance(case, Case) else None


def _keep(kept: Path, case: Case) -> None:
    """Pickle the case into the cache (atomically; a read-only or full cache keeps nothing)."""
    store_atomically(kept, pickle.dumps(case, protocol=pickle.HIGHEST_PROTOCOL))
