"""Controller side of the host processes: start, ask, time out, restart, kill.

A :class:`HostProcess` serves every adapter of one host key (bnconform.execution.plan.host_key)
across many cells. If the host dies (segfault, abort, os._exit) or does not answer within the
per-cell timeout, the cell in flight gets an ``error`` verdict naming what happened, the host
is killed, and the next cell starts a fresh one; other hosts never notice.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import tempfile
import threading
import time

from ..adapters.environment import cache_switched_off, user_cache
from ..judging.verdict import Verdict
from . import host_memory
from .adapter_classes import adapter_class, target_of
from .environments import announce, environment_of, host_command
from .plan import host_key

STARTUP_TIMEOUT = 600.0  # framework import under load (TensorFlow on 2 busy cores)
CELL_TIMEOUT = 120.0  # first call may compile (XLA, tf.function)

_LIVE: set = set()  # every started host process, so that Ctrl-C can kill them all
_LIVE_LOCK = threading.Lock()


_REFUSING = threading.Event()  # set by kill_all: a thread racing the interrupt starts no new host


def accept_new_hosts() -> None:
    """Allow host processes to start again (a new run after an interrupted one, in one process)."""
    _REFUSING.clear()


def kill_all() -> int:
    """Kill every live host process of this controller and refuse to start new ones until
    :func:`accept_new_hosts`; returns how many were running."""
    with _LIVE_LOCK:
        _REFUSING.set()
        procs = list(_LIVE)
        _LIVE.clear()
    running = [p for p in procs if p.poll() is None]
    for proc in running:
        proc.kill()
    for proc in running:
        try:
            proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
    return len(running)


def compile_cache_environment() -> dict[str, str]:
    """JAX's persistent compilation cache for every host (the user's own settings win).

    JAX adapters compile one XLA program per input shape (~30-100 ms each on CPU), which is most
    of their time in the matrix; the cache keeps those programs across runs and hosts. Cached
    programs are keyed by the computation, compile options and JAX/XLA versions, so results are
    those of a fresh compile. ``BNCONFORM_JAX_CACHE=off`` disables it."""
    if cache_switched_off("BNCONFORM_JAX_CACHE"):
        return {}
    return {"JAX_COMPILATION_CACHE_DIR": str(user_cache("jax-compilation-cache")),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def host_environment(adapter_environment: dict[str, str]) -> dict[str, str]:
    """The process environment of a host serving adapters with ``adapter_environment``: JAX's
    compilation cache (the user's own settings win), this process's environment, then what the
    adapters need, which wins over both (KERAS_BACKEND, JAX's x64 mode, thread counts, ...)."""
    return {**compile_cache_environment(), **os.environ, **adapter_environment}


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class _OverMemory(Exception):
    """A host holds more memory than its limit; the message says how much."""


class HostProcess:
    """One host process for a group of adapters sharing an environment, restarted on demand."""

    def __init__(self, names, cell_timeout: float = CELL_TIMEOUT):
        self.cell_timeout = cell_timeout
        self.names, self.environment = [], {}
        self.adapter_names: dict[str, str] = {}  # what verdicts call it: an ad hoc path reports its .name
        self.proc = None
        self._lines: queue.Queue = queue.Queue()
        self._infos: dict[str, dict] = {}
        self._warm: set[str] = set()  # adapters the running host has already loaded
        for name in names:
            self.add(name)

    def add(self, name: str) -> None:
        """Serve one more adapter (hosts load adapters on demand, so a running host needs no restart)."""
        if name not in self.names:
            cls = adapter_class(name)
            self.names.append(name)
            self.adapter_names[name] = (cls.name if cls else "") or name
            if cls is not None and not self.environment:
                self.environment = dict(cls.environment)

    def _start(self) -> None:
        interpreter, extra = host_command(environment_of(self.names[0], adapter_class(self.names[0])), log=announce)
        env = {**host_environment(self.environment), **extra, "PYTHONUNBUFFERED": "1"}
        self.stderr = tempfile.TemporaryFile()
        command = [*interpreter, "-m", "bnconform.execution.host", *map(target_of, self.names)]
        with _LIVE_LOCK:  # started and registered under the lock, so kill_all cannot miss it
            if _REFUSING.is_set():
                raise RuntimeError("interrupted: no new host process")
            self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                         env=env, text=True, bufsize=1)
            _LIVE.add(self.proc)
        self._lines, self._warm = queue.Queue(), set()
        threading.Thread(target=self._pump, args=(self.proc, self._lines), daemon=True).start()

    @staticmethod
    def _pump(proc, lines) -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)  # EOF: the host is gone

    def _stderr_tail(self) -> str:
        self.stderr.seek(0)
        text = self.stderr.read().decode("utf-8", "replace").strip().splitlines()
        return text[-1][:200] if text else ""

    def _ask(self, request: dict, timeout: float) -> tuple[dict | None, str]:
        """Send one request; returns (reply, "") or (None, what went wrong)."""
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            line = self._next_line(timeout)
        except queue.Empty:
            self.close()
            return None, f"no answer within {timeout:.0f} s (host process killed; the adapter hangs)"
        except _OverMemory as over:
            self.close()
            return None, str(over)
        except (BrokenPipeError, ValueError):  # ValueError: stdin closed by a kill from another thread
            line = None
        if line is None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            problem = f"host process died ({describe_exit(self.proc.returncode)}); last stderr: {self._stderr_tail()!r}"
            self.proc = None
            return None, problem
        return json.loads(line), ""

    def _next_line(self, timeout: float):
        """The host's next line, watching its memory meanwhile (host_memory); queue.Empty after
        ``timeout`` seconds, _OverMemory as soon as it holds more than its limit."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise queue.Empty
            try:
                return self._lines.get(timeout=min(remaining, host_memory.POLL_SECONDS))
            except queue.Empty:
                problem = host_memory.over_limit(self.proc.pid)
                if problem:
                    raise _OverMemory(problem) from None

    def _load(self, name: str) -> tuple[dict | None, str]:
        """Make the running host load the adapter (importing its framework) under the startup
        timeout, so that every cell afterwards gets only the per-cell timeout."""
        if name in self._warm and self.proc is not None and self.proc.poll() is None:
            return self._infos[name], ""
        reply, problem = self._ask({"info": True, "adapter": target_of(name)}, STARTUP_TIMEOUT)
        if reply is None:
            return None, problem
        self._warm.add(name)
        self._infos.setdefault(name, reply["info"])
        return reply["info"], ""

    def info(self, name: str) -> dict:
        """Framework version, usable devices, unavailability (cached after the first ask)."""
        if name not in self._infos:
            info, problem = self._load(name)
            self._infos[name] = info or {"name": name, "version": "?", "devices": [],
                                         "unavailable": f"host process failed to start: {problem}"}
        return self._infos[name]

    def verdict(self, cell) -> Verdict:
        """The verdict of one cell; an ``error`` verdict if the host crashed or hung."""
        reply, problem = self._load(cell.adapter)
        if reply is not None:
            request = {"case": cell.case_path, "device": cell.device, "adapter": target_of(cell.adapter),
                       "stepwise": cell.stepwise}
            reply, problem = self._ask(request, self.cell_timeout)
        if reply is not None and "verdict" in reply:
            return Verdict.from_json(reply["verdict"])
        detail = reply["invalid"] if reply else problem
        return Verdict(case=cell.case_id, family=cell.family, adapter=self.adapter_names.get(cell.adapter, cell.adapter),
                       device=cell.device, status="error", detail=detail)

    def kill(self) -> None:
        """Send the host SIGKILL without waiting for it (``close`` reaps it)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc is not None:
            with _LIVE_LOCK:
                _LIVE.discard(self.proc)
        self.proc = None


class Hosts:
    """One HostProcess per host key, created lazily, closed together (the pytest plugin's pool)."""

    def __init__(self, cell_timeout: float = CELL_TIMEOUT):
        self.cell_timeout = cell_timeout
        self.processes: dict[str, HostProcess] = {}

    def for_adapter(self, name: str) -> HostProcess:
        key = host_key(name)
        if key not in self.processes:
            self.processes[key] = HostProcess([], self.cell_timeout)
        self.processes[key].add(name)
        return self.processes[key]

    def close(self) -> None:
        """Kill every host first, then reap them: the kernel tears down their memory (GBs with a
        framework loaded) side by side instead of one host after another."""
        for process in self.processes.values():
            process.kill()
        for process in self.processes.values():
            process.close()
