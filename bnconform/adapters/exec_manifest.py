"""The manifest of a backend executable (``bnconform-backend.json``, docs/protocol.md section 1):
its rows, what must be installed for them, and the optional build step run on first use.

Reading a manifest and checking requirements start nothing; :func:`ensure_built` runs the build
command only when its output is missing or older than its inputs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST = "bnconform-backend.json"
PREFIX = "exec:"
STARTUP_TIMEOUT = 60.0  # seconds from start to handshake (a framework import on a busy machine)
CASE_TIMEOUT = 60.0  # seconds per case; below the host's 120 s, so the verdict names the backend


class BackendFailure(Exception):
    """The executable crashed, hung, wrote garbage or broke the protocol; str() says which."""


class ManifestError(ValueError):
    """A bnconform-backend.json that cannot be used; str() is one line."""


@dataclass(frozen=True)
class Row:
    """One backend row of a manifest, with the folder-wide settings it runs under."""

    folder: Path
    name: str
    command: tuple[str, ...]
    framework: str
    device_kinds: tuple[str, ...] = ("cpu",)
    doc: str = ""
    executables: tuple[str, ...] = ()  # must be on PATH to run
    files: tuple[str, ...] = ()  # must exist (relative to the folder) to run: installed packages
    install: str = ""  # what to run when something is missing
    build: dict = field(default_factory=dict, compare=False, hash=False)
    version: object = "?"
    startup_timeout: float = STARTUP_TIMEOUT
    case_timeout: float = CASE_TIMEOUT


# --- The manifest ---------------------------------------------------------------------------------

def manifest_path(location: str) -> Path:
    path = Path(location).expanduser()
    return path / MANIFEST if path.is_dir() or not path.suffix else path


def _shown(folder: Path) -> str:
    """The folder as a user types it: relative to the current directory when inside it."""
    try:
        return str(folder.relative_to(Path.cwd()))
    except ValueError:
        return str(folder)


def read_manifest(location: str) -> list[Row]:
    """Every row of the manifest in ``location`` (a folder or the manifest file itself)."""
    path = manifest_path(location)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path}: Expected: a readable JSON manifest ({MANIFEST}). Received: {exc}") from None
    if not isinstance(obj, dict) or obj.get("protocol") != 1 or not isinstance(obj.get("backends"), list):
        raise ManifestError(f"{path}: Expected: an object with \"protocol\": 1 and a \"backends\" list. "
                            f"Received: {str(obj)[:100]}")
    folder = path.parent.resolve()
    requires, timeouts = obj.get("requires", {}), obj.get("timeouts", {})
    shared = dict(folder=folder, framework=obj.get("framework", ""), executables=tuple(requires.get("executables", ())),
                  files=tuple(requires.get("files", ())), install=obj.get("install", "").replace("{folder}", _shown(folder)),
                  build=obj.get("build", {}), version=obj.get("version", "?"),
                  startup_timeout=float(timeouts.get("startup", STARTUP_TIMEOUT)),
                  case_timeout=float(timeouts.get("case", CASE_TIMEOUT)))
    rows = []
    for i, row in enumerate(obj["backends"]):
        if not isinstance(row, dict) or not isinstance(row.get("name"), str) or not _is_command(row.get("command")):
            raise ManifestError(f"{path}: /backends/{i}: Expected: {{\"name\": string, \"command\": [program, args...]}}. "
                                f"Received: {str(row)[:100]}")
        _check_build(path, shared["build"])
        rows.append(Row(name=row["name"], command=tuple(row["command"]), doc=row.get("doc", ""),
                        device_kinds=tuple(row.get("device_kinds", ("cpu",))), **shared))
    return rows


def _check_build(path: Path, build) -> None:
    """``{"command": [..., "{output}", ...], "output": path, "inputs": [paths]}`` or absent."""
    if build and not (isinstance(build, dict) and _is_command(build.get("command")) and "{output}" in build["command"]
                      and isinstance(build.get("output"), str) and isinstance(build.get("inputs", []), list)):
        raise ManifestError(f"{path}: /build: Expected: {{\"command\": [program, ..., \"{{output}}\", ...], \"output\": "
                            f"path, \"inputs\": [paths]}}. Received: {str(build)[:100]}")


def _is_command(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


# --- Requirements and the build step ---------------------------------------------------------------

def program_path(row: Row, program: str) -> str | None:
    """The path to run: a program with a slash is relative to the folder, others come from PATH."""
    if "/" in program:
        path = row.folder / program
        return str(path) if path.exists() else None
    return shutil.which(program)


def _build_outputs_stale(row: Row) -> bool:
    build = row.build
    if not build:
        return False
    output = row.folder / build["output"]
    if not output.exists():
        return True
    inputs = [row.folder / p for p in build.get("inputs", ())] + [row.folder / MANIFEST]
    return any(p.exists() and p.stat().st_mtime > output.stat().st_mtime for p in inputs)


def missing(row: Row) -> str | None:
    """Why the row cannot run here, known without starting it (and the command that fixes it)."""
    advice = f"; install it with: {row.install}" if row.install else ""
    for program in row.executables:
        if shutil.which(program) is None:
            return f"{program} not found on PATH{advice}"
    for relative in row.files:
        if not (row.folder / relative).exists():
            return f"{_shown(row.folder / relative)} is missing{advice}"
    if _build_outputs_stale(row) and shutil.which(row.build["command"][0]) is None:
        return f"{row.build['command'][0]} not found on PATH (needed to build {row.build['output']}){advice}"
    if not _build_outputs_stale(row) and program_path(row, row.command[0]) is None:
        return f"{row.command[0]} not found{advice}"
    return None


_BUILD_LOCK = threading.Lock()


def ensure_built(row: Row) -> None:
    """Run the manifest's build command when its output is missing or older than its inputs;
    builds into a temporary name and renames, so concurrent builders never see half a binary.
    Raises BackendFailure with the compiler's first error line."""
    with _BUILD_LOCK:
        if not _build_outputs_stale(row):
            return
        output = row.folder / row.build["output"]
        output.parent.mkdir(parents=True, exist_ok=True)
        temporary = output.with_name(f".{output.name}.{os.getpid()}.tmp")
        command = [str(temporary) if part == "{output}" else part for part in row.build["command"]]
        done = subprocess.run(command, cwd=row.folder, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            temporary.unlink(missing_ok=True)
            lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
            first = next((line for line in lines if "error" in line.lower()), lines[0] if lines else "no output")
            raise BackendFailure(f"{row.name}: build failed ({' '.join(row.build['command'])}): {first[:200]}")
        os.replace(temporary, output)
