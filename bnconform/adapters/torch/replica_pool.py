"""A persistent pool of replica processes joined in one gloo process group, one pool per host.

``pool()`` starts it on first use: a zygote process (``python -m
bnconform.adapters.torch.replica_worker``) imports torch once and forks WORLD workers, each rank
of one gloo world with a subgroup for every replica count; starting costs one torch import plus
the gloo handshakes, not one import per worker. Each worker talks to the host over its own
socket pair. :meth:`ReplicaPool.run` sends rank r its request (its replica's samples), waits for
the R answers and returns them in rank order.

Idle, the pool is stopped (SIGSTOP to its process group); a case wakes (SIGCONT) only its R ranks:
each rank runs one gloo transport thread per process group it is in, waking 100 times a second
(epoll with a 10 ms timeout): 35 threads, ~3,500 wake-ups a second (measured), which slowed the
torch.nn cells of the same host by ~10 % on a 2-core machine; stopped, they cost nothing.

Failure costs one cell: if a worker dies, does not answer within ``REPLY_TIMEOUT``, or some
ranks answer an error while others stay silent (stuck in a collective), the whole pool is
killed and the call raises; the next call starts a fresh pool. When every rank answers an error
(torch raised the same thing on all of them) the pool is still in step and is kept.

Cleanup: the zygote runs in its own process group, which ``close()`` SIGKILLs (``atexit`` calls it
at a normal host exit); and Linux SIGKILLs the zygote when the host dies and each worker when the
zygote dies (PR_SET_PDEATHSIG; SIGKILL also ends a stopped process), so a host killed by the
controller leaves no replica behind. The rendezvous directory (the gloo FileStore) is removed as
soon as every rank has joined every group: nothing reads the store afterwards, and a killed host
leaves no file. The death signal follows the host THREAD that started the pool: start it from
the host's main thread (the host serves cells there).
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing.connection
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

WORLD = 8  # ranks in the pool: the largest replica count the torch rows declare
COUNTS = tuple(range(2, WORLD + 1))  # replica counts with a process group
STARTUP_TIMEOUT = 60.0  # the zygote's torch import + WORLD gloo handshakes, on a loaded machine
REPLY_TIMEOUT = 45.0  # one case (both well under the controller's 120 s per cell)
STRAGGLER_TIMEOUT = 2.0  # after one rank answered an error, how long the others may take

_POOL = None
_LOCK = threading.Lock()


class PoolError(RuntimeError):
    """The pool failed (a worker died or hung); it has been killed and the next call restarts it."""


class ReplicaPool:
    """WORLD worker processes; ``run(R, requests)`` uses ranks 0..R-1 and their subgroup."""

    def __init__(self, world: int = WORLD):
        self.world = world
        self.directory = tempfile.mkdtemp(prefix="bnconform-gloo-")
        pairs = [socket.socketpair() for _ in range(world)]
        theirs = [str(b.fileno()) for _, b in pairs]
        command = [sys.executable, "-m", "bnconform.adapters.torch.replica_worker", str(world),
                   str(Path(self.directory) / "store"), ",".join(map(str, COUNTS)), *theirs]
        self.zygote = subprocess.Popen(command, pass_fds=[b.fileno() for _, b in pairs], stdin=subprocess.DEVNULL,
                                       start_new_session=True)  # its own process group: close() kills it whole
        for _, b in pairs:
            b.close()
        self.connections = [multiprocessing.connection.Connection(a.detach()) for a, _ in pairs]
        try:
            self.pids = [reply["ready"] for reply in self._gather(range(world), STARTUP_TIMEOUT, "start")]
        except PoolError:
            self.close()
            raise
        shutil.rmtree(self.directory, ignore_errors=True)  # every rank joined every group: store no longer read
        self._signal(signal.SIGSTOP)

    def run(self, replicas: int, requests: list[dict]) -> list[dict]:
        """Send ``requests[r]`` to rank r (r < replicas) and return the answers in rank order."""
        if not 2 <= replicas <= self.world or len(requests) != replicas:
            raise ValueError(f"Expected: 2 <= R <= {self.world} replicas and one request each. "
                             f"Received: R = {replicas}, {len(requests)} requests")
        with self.awake(range(replicas)):
            for rank in range(replicas):
                try:
                    self.connections[rank].send({**requests[rank], "replicas": replicas})
                except OSError:  # BrokenPipeError: the worker died since the last case
                    self.close()
                    raise PoolError(f"replica pool: rank {rank} is gone (broken pipe); pool killed") from None
            return self._gather(range(replicas), REPLY_TIMEOUT, "run the case")

    @contextlib.contextmanager
    def awake(self, ranks):
        """Those ranks running (SIGCONT) inside, stopped again (SIGSTOP) after, unless the pool was
        killed meanwhile; the other ranks and the zygote stay stopped (fewer runnable threads)."""
        pids = [self.pids[r] for r in ranks]
        self._signal(signal.SIGCONT, pids)
        try:
            yield self
        finally:
            if self.alive():
                self._signal(signal.SIGSTOP, pids)

    def _signal(self, sig: int, pids=None) -> None:
        """Send ``sig`` to ``pids``, or to the pool's whole process group (zygote and workers). A
        dead worker stays a zombie of the stopped zygote, so its pid is never reused meanwhile."""
        if self.zygote is None:
            return
        for target, send in ([(self.zygote.pid, os.killpg)] if pids is None else [(pid, os.kill) for pid in pids]):
            try:
                send(target, sig)
            except ProcessLookupError:  # gone already: the next read says so
                pass

    def _gather(self, ranks, timeout: float, doing: str) -> list[dict]:
        """Every rank's next answer; kills the pool and raises PoolError when one cannot come."""
        answers, waiting = {}, {self.connections[r]: r for r in ranks}
        deadline = time.monotonic() + timeout
        while waiting:
            ready = multiprocessing.connection.wait(list(waiting), max(0.0, deadline - time.monotonic()))
            if not ready:
                self.close()
                raise PoolError(f"replica pool: ranks {sorted(waiting.values())} did not {doing} within {timeout:g} s "
                                f"(or {STRAGGLER_TIMEOUT:g} s after another rank's error); pool killed")
            for connection in ready:
                rank = waiting.pop(connection)
                try:
                    answers[rank] = connection.recv()
                except (EOFError, OSError):
                    self.close()
                    raise PoolError(f"replica pool: rank {rank} died while trying to {doing}; pool killed "
                                    "(its stderr went to the host's)") from None
                if "error" in answers[rank]:  # the others answer soon, or are stuck in a collective
                    deadline = min(deadline, time.monotonic() + STRAGGLER_TIMEOUT)
        return [answers[r] for r in ranks]

    def alive(self) -> bool:
        return self.zygote is not None and self.zygote.poll() is None

    def close(self) -> None:
        """SIGKILL the zygote's process group (a worker may be stuck in a collective or stopped: no
        polite shutdown) and remove the rendezvous directory if it is still there."""
        if self.zygote is not None:
            self._signal(signal.SIGKILL)
            self.zygote.wait(timeout=10)
            self.zygote = None
        for connection in self.connections:
            connection.close()
        self.connections = []
        shutil.rmtree(self.directory, ignore_errors=True)


def pool() -> ReplicaPool:
    """This process's pool, started on first use (and again after a failure killed it)."""
    global _POOL
    with _LOCK:
        if _POOL is None or not _POOL.alive():
            if _POOL is not None:
                _POOL.close()
            _POOL = ReplicaPool()
        return _POOL


def shutdown() -> None:
    """Kill this process's pool, if any (registered with atexit)."""
    global _POOL
    with _LOCK:
        if _POOL is not None:
            _POOL.close()
            _POOL = None


atexit.register(shutdown)
