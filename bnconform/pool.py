"""Controller side of the worker processes: start, ask, time out, restart.

An :class:`AdapterProcess` keeps one worker alive across many cells. If the worker dies
(segfault, abort, os._exit) or does not answer within the per-cell timeout, the cell gets an
``error`` verdict naming what happened, the worker is killed, and the next cell starts a
fresh one; other adapters never notice.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading

from .adapters.registry import RegistryError, resolve, target_of
from .verdict import Verdict

STARTUP_TIMEOUT = 600.0  # framework import under load (TensorFlow on 2 busy cores)
CELL_TIMEOUT = 120.0  # first call may compile (XLA, tf.function)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class AdapterProcess:
    """One adapter's worker process, restarted on demand after a crash or timeout."""

    def __init__(self, name: str, cell_timeout: float = CELL_TIMEOUT):
        self.name = name
        self.cell_timeout = cell_timeout
        try:
            adapter_class = resolve(name)
        except RegistryError:  # a broken registered module: the worker will report why
            adapter_class = None
        self.environment = dict(adapter_class.environment) if adapter_class else {}
        self.adapter_name = (adapter_class.name if adapter_class else "") or name  # what verdicts call it
        self.proc = None
        self._lines: queue.Queue = queue.Queue()
        self._info = None

    def _start(self) -> None:
        env = {**os.environ, **self.environment, "PYTHONUNBUFFERED": "1"}
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "bnconform.worker", target_of(self.name)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                     env=env, text=True, bufsize=1)
        self._lines = queue.Queue()
        threading.Thread(target=self._pump, args=(self.proc, self._lines), daemon=True).start()

    @staticmethod
    def _pump(proc, lines) -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)  # EOF: the worker is gone

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
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            self.close()
            return None, f"no answer within {timeout:.0f} s (worker killed; the adapter hangs)"
        except BrokenPipeError:
            line = None
        if line is None:
            self.proc.wait(timeout=10)
            problem = f"worker process died ({_describe_exit(self.proc.returncode)}); last stderr: {self._stderr_tail()!r}"
            self.proc = None
            return None, problem
        return json.loads(line), ""

    def info(self) -> dict:
        """Framework version, usable devices, unavailability (cached after the first ask)."""
        if self._info is None:
            reply, problem = self._ask({"info": True}, STARTUP_TIMEOUT)
            self._info = reply["info"] if reply else {"name": self.name, "version": "?", "devices": [],
                                                      "unavailable": f"worker failed to start: {problem}"}
        return self._info

    def verdict(self, case_path: str, case_id: str, family: str, device: str) -> Verdict:
        """The verdict of one cell; an ``error`` verdict if the worker crashed or hung."""
        first = self.proc is None
        reply, problem = self._ask({"case": case_path, "device": device},
                                   STARTUP_TIMEOUT if first else self.cell_timeout)
        if reply is not None and "verdict" in reply:
            return Verdict.from_json(reply["verdict"])
        detail = reply["invalid"] if reply else problem
        return Verdict(case=case_id, family=family, adapter=self.adapter_name, device=device, status="error",
                       detail=detail)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


class Pool:
    """One AdapterProcess per adapter name, created lazily, closed together."""

    def __init__(self, cell_timeout: float = CELL_TIMEOUT):
        self.cell_timeout = cell_timeout
        self.processes: dict[str, AdapterProcess] = {}

    def get(self, name: str) -> AdapterProcess:
        if name not in self.processes:
            self.processes[name] = AdapterProcess(name, self.cell_timeout)
        return self.processes[name]

    def close(self) -> None:
        for process in self.processes.values():
            process.close()
