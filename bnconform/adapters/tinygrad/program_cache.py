"""tinygrad's cache of lowered and compiled kernels, kept on disk between host processes.

tinygrad (0.14) keeps every kernel it lowers in ``tinygrad.codegen.to_program_cache``, a dict
from ``to_program_key(ast, renderer)`` (the kernel AST's content hash, the renderer and every
setting that changes generated code) to the finished ``PROGRAM`` UOp (linearized uops, C source
and clang's binary). ``engine.realize.lower_and_compile`` consults it before lowering; a miss
costs ~90 ms of Python rewrites per kernel, most of this adapter's CPU time, and the dict dies
with the process. tinygrad's own disk cache only spares the clang call.

This module fills that dict from a file at first use and, after every case, appends the entries
lowered since (an append-only log of pickled dicts, written under a lock). A hit hands tinygrad
exactly the PROGRAM its own lowering would make for that key: kernels, numerics and
optimizations are unchanged. The file lives in ``~/.cache/bnconform/tinygrad-programs``
(``$XDG_CACHE_HOME`` if set), one per tinygrad install and clang (name: a hash of tinygrad's
version, its source files' sizes and mtimes, and the compiler's path and mtime);
``BNCONFORM_TINYGRAD_CACHE=off`` disables it. Anything unexpected (an unreadable file, a tinygrad
without these names) leaves tinygrad's in-memory behaviour alone.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import pickle
import shutil
from pathlib import Path

from ..environment import cache_switched_off, user_cache

_STATE: dict = {}


def enabled() -> bool:
    return not cache_switched_off("BNCONFORM_TINYGRAD_CACHE")


def fingerprint() -> str:
    """A hash naming the cache file: tinygrad's version and sources, and the C compiler."""
    import tinygrad

    root = Path(tinygrad.__file__).parent
    digest = hashlib.sha256(getattr(tinygrad, "__version__", "?").encode())
    for path in sorted(root.rglob("*.py")):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    compiler = shutil.which(os.environ.get("CC", "clang")) or "?"
    compiler_mtime = os.stat(compiler).st_mtime_ns if os.path.exists(compiler) else 0
    digest.update(f"{os.path.realpath(compiler)}:{compiler_mtime}".encode())
    return digest.hexdigest()[:16]


def cache_file() -> Path:
    return user_cache("tinygrad-programs") / f"{fingerprint()}.pkl"


def _read(path: Path) -> tuple[dict, bool]:
    """(every complete record of the log, whether the whole file was read); a truncated tail (a
    host killed mid-write) or a file from an incompatible install stops the reading."""
    entries: dict = {}
    try:
        with open(path, "rb") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH)  # no append in progress while the log is read
            size = os.fstat(handle.fileno()).st_size
            while handle.tell() < size:
                record = pickle.load(handle)
                entries.update(record if isinstance(record, dict) else {})
    except FileNotFoundError:
        return entries, True
    except Exception:  # noqa: BLE001 (truncated, or classes this tinygrad lacks: keep what was read)
        return entries, False
    return entries, True


def _rewrite(path: Path, entries: dict) -> None:
    """Replace a damaged log by its readable entries, so that later appends are read again."""
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        temporary.write_bytes(pickle.dumps(entries, protocol=pickle.HIGHEST_PROTOCOL))
        os.replace(temporary, path)
    except Exception:  # noqa: BLE001 (unwritable: tinygrad lowers again, as without this module)
        temporary.unlink(missing_ok=True)


def install() -> None:
    """Load the saved programs into tinygrad's cache, once per process."""
    if _STATE or not enabled():
        return
    try:
        from tinygrad.codegen import to_program_cache
        path = cache_file()
    except Exception:  # noqa: BLE001 (a tinygrad that moved these names: keep its own behaviour)
        _STATE["off"] = True
        return
    loaded, whole = _read(path)
    if not whole:
        _rewrite(path, loaded)
    for key, program in loaded.items():
        to_program_cache.setdefault(key, program)
    _STATE.update(cache=to_program_cache, path=path, known=set(to_program_cache))


def save() -> None:
    """Append the programs lowered since the last save as one record (under an exclusive lock,
    so concurrent hosts never interleave). Called after every case: the controller kills its
    hosts instead of letting them exit, so an atexit hook would never run."""
    cache, path, known = _STATE.get("cache"), _STATE.get("path"), _STATE.get("known")
    if cache is None or not (new := {key: value for key, value in cache.items() if key not in known}):
        return
    known.update(new)
    try:
        record = pickle.dumps(new, protocol=pickle.HIGHEST_PROTOCOL)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.write(record)
    except Exception:  # noqa: BLE001 (unpicklable, read-only or full disk: the next process lowers again)
        pass
