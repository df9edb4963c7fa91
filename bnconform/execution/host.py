"""A host process serving one or more adapters that share an environment:
``python -m bnconform.execution.host module:Class [module:Class ...]``.

Protocol (JSON lines): the controller writes ``{"info": true, "adapter": TARGET}`` or
``{"case": PATH, "device": D, "adapter": TARGET}`` on stdin; the host answers one line each on
its private protocol channel (the original stdout). Everything the frameworks print goes to
stderr, so chatter cannot corrupt the protocol. The controller starts the host with the
adapters' common ``environment`` (KERAS_BACKEND, JAX_ENABLE_X64) already set, so each framework
is imported once per host; a crash or hang costs only the cell in flight (the controller restarts it).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

from ..adapters.registry import load_class
from ..caseformat.validation import CaseError
from ..judging.judge import judge
from ..judging.verdict import Verdict
from .case_cache import load_case


def protocol_channel():
    """Keep the real stdout for the protocol and point fd 1 at stderr for everything else."""
    channel = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return channel


class Hosted:
    """One adapter inside the host: its availability, devices and defaults, read on first use."""

    def __init__(self, target: str):
        self.broken = None
        try:
            self.adapter = load_class(target)()
        except Exception as exc:  # noqa: BLE001 (a registered module that no longer imports)
            self.adapter, self.broken = None, f"{target}: cannot load the adapter: {type(exc).__name__}: {exc}"
        start = time.perf_counter()
        self.unavailable = self.broken or self.adapter.unavailable_reason()
        self.devices = [] if self.unavailable else self.adapter.devices()
        self.version = self.adapter.framework_version() if self.adapter else "?"
        self.defaults = {} if self.unavailable else _safe_defaults(self.adapter)
        self.import_seconds = time.perf_counter() - start
        self.name = self.adapter.name if self.adapter else target

    def info(self) -> dict:
        return {"name": self.name, "version": self.version, "devices": self.devices,
                "unavailable": self.unavailable, "import_seconds": self.import_seconds,
                "defaults": self.defaults}

    def verdict(self, case, device: str, stepwise: bool = False) -> Verdict:
        base = dict(case=case.id, family=case.family, adapter=self.name, device=device)
        if self.broken:
            return Verdict(**base, status="error", detail=self.broken)
        if self.unavailable:
            return Verdict(**base, status="unavailable", detail=self.unavailable)
        if device not in self.devices:
            note = f"; {self.adapter.device_note}" if self.adapter.device_note else ""
            return Verdict(**base, status="unavailable", detail=f"device {device!r} not present here "
                           f"(usable: {', '.join(self.devices) or 'none'}){note}")
        return judge(self.adapter, case, device, stepwise)


def _safe_defaults(adapter) -> dict:
    """The framework's own defaults; a failure to read them is reported, not fatal."""
    try:
        return adapter.framework_defaults()
    except Exception as exc:  # an API that moved: say so in the report instead of crashing
        return {"error": f"{type(exc).__name__}: {exc}"}


class Host:
    """The adapters this process serves (loaded lazily) and a cache of parsed cases."""

    def __init__(self, targets):
        self.targets = list(targets)
        self.hosted: dict[str, Hosted] = {}
        self.cases: dict[str, object] = {}

    def get(self, target: str) -> Hosted:
        if target not in self.hosted:
            self.hosted[target] = Hosted(target)
        return self.hosted[target]

    def answer(self, request: dict) -> dict:
        hosted = self.get(request.get("adapter") or self.targets[0])
        if request.get("info"):
            return {"info": hosted.info()}
        path = request["case"]
        try:
            if path not in self.cases:
                self.cases[path] = load_case(path)
        except CaseError as exc:
            return {"invalid": str(exc)}
        verdict = hosted.verdict(self.cases[path], request["device"], bool(request.get("stepwise")))
        return {"verdict": {**verdict.to_json(), "version": hosted.version}}


def serve(targets) -> None:
    # Ctrl-C belongs to the controller, which kills its hosts; a host just ends at stdin EOF.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = protocol_channel()
    host = Host(targets)
    for line in sys.stdin:
        channel.write(json.dumps(host.answer(json.loads(line))) + "\n")


if __name__ == "__main__":
    serve(sys.argv[1:])
