"""One writer at a time per report directory: an exclusive lock on ``<dir>/.bnconform.lock``.

``bnconform run`` takes the lock of the directory its reports will go to as it starts (if that
directory exists), and keeps it until they are written; a second run for it is refused at once
(:class:`ReportsBusy`, naming the pid that holds it), instead of running for a minute and then
replacing the first run's files, or interleaving with them. Publishing the pages always takes
the lock too (waiting up to PUBLISH_WAIT_SECONDS for a run that holds it), so ``pytest`` writing
its report at the end of a session never mixes its files with a run's. The lock is ``flock``:
the kernel drops it when its holder dies, so a killed run leaves nothing to clean up. Where
``fcntl`` is missing (Windows) nothing is locked.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover (not POSIX)
    fcntl = None

LOCK_NAME = ".bnconform.lock"
PUBLISH_WAIT_SECONDS = 300.0
_HELD: dict[str, int] = {}  # resolved directory -> file descriptor of the lock this process holds


class ReportsBusy(Exception):
    """Another bnconform process is writing the same report directory; the message says which."""


@contextlib.contextmanager
def reserved(directory, wait: float = 0.0, create: bool = True):
    """Hold the lock of ``directory`` for the duration (a no-op when this process holds it already,
    or when the directory does not exist and ``create`` is off: a run that is interrupted must not
    leave a directory behind); ReportsBusy when another process holds it for over ``wait`` seconds."""
    key = str(Path(directory).resolve())
    if fcntl is None or key in _HELD or not (create or Path(directory).is_dir()):
        yield
        return
    Path(directory).mkdir(parents=True, exist_ok=True)
    _HELD[key] = _acquire(Path(directory) / LOCK_NAME, wait)
    try:
        yield
    finally:
        os.close(_HELD.pop(key))  # closing the descriptor releases the flock


def _acquire(lock: Path, wait: float) -> int:
    descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip() or "?"
                os.close(descriptor)
                raise ReportsBusy(f"{lock.parent}: Expected: no other bnconform writing these reports. Received: "
                                  f"process {holder} holds {lock.name}; wait for it, or write elsewhere with --out DIR"
                                  ) from None
            time.sleep(0.2)
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
    return descriptor
