"""Backends in any language: an executable speaking JSON lines (docs/protocol.md) as an Adapter.

A folder holds ``bnconform-backend.json`` (the *manifest*: the command of each backend row,
what must be installed, an optional build step) and the executable. ``exec:FOLDER`` (or
``exec:FOLDER#NAME`` when the manifest declares several rows) names a row anywhere a
``module:Class`` path is accepted; :func:`adapter_class` turns it into an :class:`ExecAdapter`
subclass. Its capabilities, deviations and version come from the executable's handshake, read on
first use (in the controller: a start that reads the handshake and closes; in a host process:
the same process then serves every case of that host). The executable is started once per host
and answers one request per case; a crash, a hang past the case timeout, a line that is not
JSON or an answer that breaks the protocol costs the cell in flight (an ``error`` naming what
happened) and the next cell starts a fresh process. A wrong protocol version or a broken
handshake makes every cell of that row an ``error`` with the reason; a missing interpreter,
package or compiler makes them ``unavailable`` with the command that installs it.
Importing this module imports no framework and starts nothing.
"""

from __future__ import annotations

import ctypes
import functools
import json
import queue
import signal
import subprocess
import tempfile
import threading
from typing import ClassVar

from ..caseformat.model import EXTENSIONS, NORMALIZE_WITH
from ..judging.capabilities import Capabilities
from .base import Adapter, Unsupported
from .exec_manifest import (PREFIX, BackendFailure, ManifestError, Row, ensure_built, manifest_path, missing,
                            program_path, read_manifest)
from .exec_protocol import Handshake, ProtocolError, answer_to_results, parse_handshake, request_for

# Until a handshake says otherwise, every cell goes to the host, which reports why (error/unavailable).
UNKNOWN_CAPABILITIES = Capabilities(extensions=frozenset(EXTENSIONS), gradients=frozenset(NORMALIZE_WITH))


def _split(target: str) -> tuple[str, str | None]:
    location, _, name = target[len(PREFIX):].partition("#")
    return location, name or None


@functools.lru_cache(maxsize=None)
def adapter_class(target: str) -> type["ExecAdapter"]:
    """The ExecAdapter subclass for ``exec:FOLDER`` or ``exec:FOLDER#NAME`` (one class per target,
    so its handshake is read once per process)."""
    location, name = _split(target)
    rows = read_manifest(location)
    chosen = [r for r in rows if name in (None, r.name)]
    if len(chosen) != 1:
        names = ", ".join(f"{PREFIX}{location}#{r.name}" for r in rows)
        raise ManifestError(f"{target}: Expected: one backend row of {manifest_path(location)}: {names}. "
                            f"Received: {'no row named ' + repr(name) if name else f'{len(rows)} rows'}")
    row = chosen[0]
    attrs = {"row": row, "name": row.name, "framework": row.framework, "device_kinds": row.device_kinds,
             "install_hint": row.install, "__doc__": row.doc or f"{row.name}: an executable speaking docs/protocol.md",
             "__module__": __name__, "_probed": {}}
    return type(f"Exec_{row.name.replace('.', '_').replace('-', '_')}", (ExecAdapter,), attrs)


# --- One running executable ---------------------------------------------------------------------------

MAX_LINE_CHARS = 64 * 2**20  # one answer (the largest shipped case answers in well under 1 MB)
MAX_UNREAD_LINES = 16  # lines written and not yet asked for; one per request is the protocol
_TOO_LONG = f"a line longer than {MAX_LINE_CHARS // 2**20} Mi characters"
_FLOOD = f"more than {MAX_UNREAD_LINES} lines nobody asked for"

def _die_with_parent() -> None:
    """prctl(PR_SET_PDEATHSIG, SIGKILL) in the child: a killed host leaves no backend behind."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):  # not glibc Linux: EOF on its stdin still ends a well-behaved backend
        pass


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class BackendProcess:
    """The executable of one row, started in its folder, with a thread reading its stdout lines."""

    def __init__(self, row: Row):
        self.row = row
        self.stderr = tempfile.TemporaryFile()
        program = program_path(row, row.command[0]) or row.command[0]
        try:
            self.proc = subprocess.Popen([program, *row.command[1:]], cwd=row.folder, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self.stderr, text=True, encoding="utf-8",
                                         errors="replace", bufsize=1, preexec_fn=_die_with_parent)
        except OSError as exc:
            raise BackendFailure(f"{row.name}: cannot start {row.command[0]}: {exc}") from None
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        """Lines from stdout into the queue, bounded: a line longer than MAX_LINE_CHARS (endless
        output without a newline) or more than MAX_UNREAD_LINES lines nobody asked for (a flood)
        end the reading with a marker that read() turns into a failure, so memory stays bounded."""
        while True:
            line = self.proc.stdout.readline(MAX_LINE_CHARS + 1)
            if not line:
                break
            if len(line) > MAX_LINE_CHARS:
                self.lines.put(_TOO_LONG)
                return
            if self.lines.qsize() >= MAX_UNREAD_LINES:
                self.lines.put(_FLOOD)
                return
            self.lines.put(line)
        self.lines.put(None)  # EOF: the process closed stdout or died

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr_tail(self) -> str:
        self.stderr.seek(0)
        lines = [line for line in self.stderr.read().decode("utf-8", "replace").splitlines() if line.strip()]
        return lines[-1][:200] if lines else ""

    def read(self, timeout: float, doing: str) -> dict:
        """The next JSON line; BackendFailure (process killed) on EOF, timeout or garbage."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise BackendFailure(f"{self.row.name}: no answer within {timeout:g} s {doing} (process killed; it hangs)") from None
        if line in (_TOO_LONG, _FLOOD):
            self.kill()
            raise BackendFailure(f"{self.row.name}: wrote {line} {doing} (process killed). Expected: one JSON object "
                                 f"per line on stdout, one line per request")
        if line is None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()
            raise BackendFailure(f"{self.row.name}: process ended ({describe_exit(self.proc.returncode)}) {doing}; "
                                 f"last stderr: {self.stderr_tail()!r}")
        try:
            return json.loads(line)
        except ValueError:
            self.kill()
            raise BackendFailure(f"{self.row.name}: wrote a line that is not JSON {doing} (process killed). "
                                 f"Expected: one JSON object per line on stdout. Received: {line.strip()[:80]!r}") from None

    def handshake(self) -> Handshake:
        try:
            return parse_handshake(self.read(self.row.startup_timeout, "before its handshake"), self.row.name)
        except ProtocolError as exc:
            self.kill()
            raise BackendFailure(f"{self.row.name}: {exc}") from None

    def ask(self, request: dict) -> dict:
        if not self.lines.empty():  # lines written after its last answer: the next read would be stale
            self.kill()
            raise BackendFailure(f"{self.row.name}: wrote lines nobody asked for after its last answer (process "
                                 f"killed). Expected: one JSON object per line on stdout, one line per request")
        try:
            self.proc.stdin.write(json.dumps(request, separators=(",", ":")) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass  # it died: read() reports how
        return self.read(self.row.case_timeout, f"while running {request['case']['id']}")

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        """Close stdin (the backend's signal to exit), then kill it if it lingers."""
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            self.kill()


# --- The adapter ---------------------------------------------------------------------------------------

class _FromHandshake:
    """A class attribute read from the row's handshake (started once per process on first read)."""

    def __init__(self, attribute: str, fallback):
        self.attribute, self.fallback = attribute, fallback

    def __get__(self, instance, owner):
        handshake = owner.handshake()
        if handshake is None or handshake.unavailable:
            return self.fallback(owner) if callable(self.fallback) else self.fallback
        return getattr(handshake, self.attribute)


class ExecAdapter(Adapter):
    """Base of the classes :func:`adapter_class` makes: one row of a manifest."""

    row: ClassVar[Row]
    _probed: ClassVar[dict]  # {"handshake": Handshake | None, "failure": str | None}, per class
    isolated = True  # one host per row: rows never wait for each other
    capabilities = _FromHandshake("capabilities", UNKNOWN_CAPABILITIES)
    deviations = _FromHandshake("deviations", ())
    decay_parameter = _FromHandshake("decay_parameter", None)
    keeps_state = _FromHandshake("keeps_state", True)
    notes = _FromHandshake("notes", lambda cls: "capabilities unknown until it runs: "
                           + (cls._probed.get("failure") or cls.missing() or cls.handshake().unavailable))

    @classmethod
    def missing(cls) -> str | None:
        """Why the row cannot run here, known without starting it (None if nothing is missing)."""
        return missing(cls.row)

    @classmethod
    def handshake(cls) -> Handshake | None:
        """The row's handshake, read once per process; None when it cannot run or broke the protocol."""
        if "handshake" not in cls._probed:
            if cls.missing():
                return None  # nothing to start; asked again later (an install may follow)
            try:
                ensure_built(cls.row)
                process = BackendProcess(cls.row)
                try:
                    cls._record(process.handshake(), None)
                finally:
                    process.close()
            except BackendFailure as exc:
                cls._record(None, str(exc))
        return cls._probed["handshake"]

    @classmethod
    def _record(cls, handshake: Handshake | None, failure: str | None) -> None:
        cls._probed.setdefault("handshake", handshake)
        cls._probed.setdefault("failure", failure)

    def __init__(self):
        self._process: BackendProcess | None = None
        self._broken: str | None = None  # a failed build or handshake: every cell is an error saying so
        self._requests = 0

    def unavailable_reason(self) -> str | None:
        reason = self.missing()
        if reason:
            return reason
        try:
            self._live_process()
        except BackendFailure:
            return None  # not absent but broken: run() reports it as each cell's error
        return type(self).handshake().unavailable

    def devices(self) -> list[str]:
        handshake = type(self).handshake()
        return list(handshake.devices) if handshake and not handshake.unavailable else list(self.device_kinds)

    def framework_version(self) -> str:
        handshake = type(self).handshake()
        return handshake.version if handshake else self.listed_version()

    @classmethod
    def listed_version(cls) -> str:
        """The version the manifest points at (``bnconform list`` starts nothing)."""
        version = cls.row.version
        if isinstance(version, dict):  # {"json_file": path, "field": name}, e.g. an npm package.json
            try:
                return str(json.loads((cls.row.folder / version["json_file"]).read_text())[version["field"]])
            except (OSError, ValueError, KeyError, TypeError):
                return "not installed"
        return str(version)

    def framework_defaults(self) -> dict:
        handshake = type(self).handshake()
        return dict(handshake.defaults) if handshake else {}

    def _live_process(self) -> BackendProcess:
        """The running executable, started (with its handshake) if it is not running."""
        if self._broken:
            raise BackendFailure(self._broken)
        if self._process is None or not self._process.alive():
            try:
                ensure_built(self.row)
                process = BackendProcess(self.row)
                type(self)._record(process.handshake(), None)
            except BackendFailure as exc:
                self._broken = str(exc)
                type(self)._record(None, self._broken)
                raise
            self._process = process
        return self._process

    def run(self, case, device):
        process = self._live_process()
        self._requests += 1
        try:
            kind, value = answer_to_results(process.ask(request_for(case, device, self._requests)),
                                            self._requests, len(case.steps))
        except ProtocolError as exc:
            process.kill()  # its state is unknown now: the next case starts a fresh process
            raise BackendFailure(f"{self.name}: {exc}") from None
        if kind == "unsupported":
            raise Unsupported(f"{self.name}: {value}")
        if kind == "error":
            raise value
        return value

    def close(self) -> None:
        """End the executable (closing its stdin first); the next case starts a fresh one."""
        if self._process is not None:
            self._process.close()
            self._process = None

    def __del__(self):
        if getattr(self, "_process", None) is not None:
            self.close()
