"""A worker process that hosts one adapter: ``python -m bnconform.worker module:Class``.

Protocol (JSON lines): the controller writes ``{"info": true}`` or ``{"case": PATH, "device": D}``
on stdin; the worker answers one line each on its private protocol channel (the original
stdout). Everything the framework prints goes to stderr, so chatter cannot corrupt the
protocol. Running each adapter in its own process gives it its own environment
(KERAS_BACKEND, TF_USE_LEGACY_KERAS) and means a crash or hang costs only its own cells.
"""

from __future__ import annotations

import json
import os
import sys
import time

from .adapters.registry import load_class
from .judge import judge
from .verdict import Verdict
from .validation import CaseError, load_case


def _protocol_channel():
    """Keep the real stdout for the protocol and point fd 1 at stderr for everything else."""
    channel = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return channel


class _Host:
    """The adapter, its availability, and a cache of parsed cases."""

    def __init__(self, target: str):
        self.adapter = load_class(target)()
        start = time.perf_counter()
        self.unavailable = self.adapter.unavailable_reason()
        self.devices = [] if self.unavailable else self.adapter.devices()
        self.version = self.adapter.framework_version()
        self.defaults = {} if self.unavailable else _safe_defaults(self.adapter)
        self.import_seconds = time.perf_counter() - start
        self.cases = {}

    def info(self) -> dict:
        return {"name": self.adapter.name, "version": self.version, "devices": self.devices,
                "unavailable": self.unavailable, "import_seconds": self.import_seconds,
                "defaults": self.defaults}

    def verdict(self, path: str, device: str) -> Verdict:
        if path not in self.cases:
            self.cases[path] = load_case(path)
        case = self.cases[path]
        base = dict(case=case.id, family=case.family, adapter=self.adapter.name, device=device)
        if self.unavailable:
            return Verdict(**base, status="unavailable", detail=self.unavailable)
        if device not in self.devices:
            return Verdict(**base, status="unavailable", detail=f"device {device!r} not present here "
                           f"(usable: {', '.join(self.devices)})")
        return judge(self.adapter, case, device)


def _safe_defaults(adapter) -> dict:
    """The framework's own defaults; a failure to read them is reported, not fatal."""
    try:
        return adapter.framework_defaults()
    except Exception as exc:  # an API that moved: say so in the report instead of crashing
        return {"error": f"{type(exc).__name__}: {exc}"}


def serve(target: str) -> None:
    channel = _protocol_channel()
    host = _Host(target)
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("info"):
            reply = {"info": host.info()}
        else:
            try:
                verdict = host.verdict(request["case"], request["device"])
                reply = {"verdict": {**verdict.to_json(), "version": host.version}}
            except CaseError as exc:
                reply = {"invalid": str(exc)}
        channel.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    serve(sys.argv[1])
