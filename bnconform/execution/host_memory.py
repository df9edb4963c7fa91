"""How much memory a host process may hold before the controller kills it.

An adapter that allocates without end (a runaway shape, a leak in a framework) would otherwise
take the whole machine, and every other host with it. While it waits for a host's answer, the
controller reads the host's resident set size (``VmRSS`` in /proc/<pid>/status) every
POLL_SECONDS; above :func:`limit_bytes` it kills the host, and the cell in flight is an
``error`` naming both numbers. The limit is ``BNCONFORM_HOST_MEMORY_MB`` when set, else
DEFAULT_SHARE of the machine's memory. Without /proc (not Linux) nothing is watched.
"""

from __future__ import annotations

import functools
import os

POLL_SECONDS = 0.2
DEFAULT_SHARE = 0.4  # of MemTotal: two hosts at the limit still leave the machine a fifth


def _proc_kib(path: str, field: str) -> int | None:
    """The ``field:  N kB`` value of a /proc status-like file, in KiB (None if absent)."""
    try:
        with open(path, encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def limit_bytes() -> int | None:
    """The per-host limit in bytes (BNCONFORM_HOST_MEMORY_MB, when it is a number > 0), or None
    when it cannot be applied here."""
    try:
        asked = float(os.environ.get("BNCONFORM_HOST_MEMORY_MB", ""))
    except ValueError:
        asked = 0.0
    return int(asked * 2**20) if asked > 0 else _default_limit()


@functools.lru_cache(maxsize=None)
def _default_limit() -> int | None:
    total = _proc_kib("/proc/meminfo", "MemTotal")
    return int(total * 1024 * DEFAULT_SHARE) if total else None


def resident_bytes(pid: int) -> int | None:
    """The process's resident set size in bytes (None: gone, or no /proc)."""
    kib = _proc_kib(f"/proc/{pid}/status", "VmRSS")
    return None if kib is None else kib * 1024


def over_limit(pid: int) -> str | None:
    """Why the host ``pid`` must be killed for its memory, or None while it is within the limit."""
    limit = limit_bytes()
    used = resident_bytes(pid) if limit else None
    if used is None or used <= limit:
        return None
    return (f"host process killed: it held {used / 2**30:.2f} GiB of memory, over the per-host limit of "
            f"{limit / 2**30:.2f} GiB (BNCONFORM_HOST_MEMORY_MB)")
