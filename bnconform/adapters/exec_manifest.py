"""The manifest of a backend executable (``bnconform-backend.json``, docs/protocol.md section 1):
its rows, what must be installed for them, and the optional build step run on first use.

Reading a manifest and checking requirements start nothing; :func:`ensure_built` runs the build
command only when its output is missing or older than its inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..caseformat.bounded_input import read_text
from ..caseformat.shipped_data import SHIPPED
from .environment import user_cache

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
    setup: tuple[str, ...] = ()  # the command `bnconform setup` runs for it (in the folder), when one is declared
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
    """Every row of the manifest in ``location`` (a folder or the manifest file itself); a
    ManifestError (one line naming the file and the field) for anything it cannot use."""
    path = manifest_path(location)
    try:
        obj = json.loads(read_text(path))
    except (OSError, ValueError, RecursionError) as exc:
        raise ManifestError(f"{path}: Expected: a readable JSON manifest ({MANIFEST}). Received: {exc}") from None
    if not isinstance(obj, dict) or obj.get("protocol") != 1 or not isinstance(obj.get("backends"), list):
        raise ManifestError(f"{path}: Expected: an object with \"protocol\": 1 and a \"backends\" list. "
                            f"Received: {obj!r:.100}")
    problem = _field_problem(obj)
    if problem:
        raise ManifestError(f"{path}: {problem}")
    folder = working_folder(path.parent.resolve(), bool(obj.get("setup")))
    requires, timeouts = obj.get("requires", {}), obj.get("timeouts", {})
    shared = dict(folder=folder, framework=obj.get("framework", ""), executables=tuple(requires.get("executables", ())),
                  files=tuple(requires.get("files", ())), install=obj.get("install", "").replace("{folder}", _shown(folder)),
                  build=obj.get("build", {}), version=obj.get("version", "?"),
                  setup=tuple(part.replace("{folder}", str(folder)) for part in obj.get("setup", ())),
                  startup_timeout=float(timeouts.get("startup", STARTUP_TIMEOUT)),
                  case_timeout=float(timeouts.get("case", CASE_TIMEOUT)))
    return [Row(name=row["name"], command=tuple(row["command"]), doc=row.get("doc", ""),
                device_kinds=tuple(row.get("device_kinds", ("cpu",))), **shared) for row in obj["backends"]]


def working_folder(folder: Path, has_setup: bool) -> Path:
    """Where a backend's setup installs and its commands run: its own folder, except for a
    backend shipped inside an installed bnconform that declares a setup (``npm ci`` for
    TensorFlow.js), which runs from a copy of its shipped files in the user cache
    (``~/.cache/bnconform/backends/<hash>/<name>/``, ``$XDG_CACHE_HOME`` if set), so that setup
    never writes into site-packages. The hash covers every shipped file's path and bytes: an
    upgraded bnconform gets a fresh copy. The copy is made under a temporary name and renamed, so
    concurrent readers see all of it or none."""
    if not has_setup or SHIPPED.resolve() not in folder.parents:
        return folder
    files = sorted(p for p in folder.rglob("*") if p.is_file() and "node_modules" not in p.relative_to(folder).parts)
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(folder)).encode() + b"\0" + file.read_bytes())
    copy = user_cache("backends") / digest.hexdigest()[:16] / folder.name
    if not copy.is_dir():
        temporary = copy.with_name(f".{folder.name}.{os.getpid()}.tmp")
        shutil.copytree(folder, temporary, ignore=shutil.ignore_patterns("node_modules"), dirs_exist_ok=True)
        try:
            os.rename(temporary, copy)
        except OSError:  # another process renamed its copy first: the same bytes
            shutil.rmtree(temporary, ignore_errors=True)
    return copy


def _field_problem(obj: dict) -> str | None:
    """"/field: Expected: ... Received: ..." for the first optional field of a manifest that has the
    wrong type or value, then for the first malformed row; None when every field can be used."""
    checks = [("/framework", obj.get("framework", ""), _is_text, "a string"),
              ("/version", obj.get("version", "?"), _is_version, 'a string or {"json_file": path, "field": name}'),
              ("/install", obj.get("install", ""), _is_text, "a string"),
              ("/setup", obj.get("setup", ["-"]), _is_command, "a command: [program, args...] ({folder}: the folder)"),
              ("/requires", obj.get("requires", {}), _is_string_lists({"executables", "files"}),
               '{"executables": [names], "files": [paths]}'),
              ("/timeouts", obj.get("timeouts", {}), _are_seconds, '{"startup": seconds > 0, "case": seconds > 0}'),
              ("/build", obj.get("build", {}), _is_build,
               '{"command": [program, ..., "{output}", ...], "output": path, "inputs": [paths]}')]
    checks += [(f"/backends/{i}", row, _is_row, '{"name": string, "command": [program, args...], "doc": string, '
                                                '"device_kinds": [kinds]}') for i, row in enumerate(obj["backends"])]
    for where, value, good, expected in checks:
        if not good(value):
            return f"{where}: Expected: {expected}. Received: {value!r:.100}"
    return None


def _is_text(value) -> bool:
    return isinstance(value, str)


def _is_version(value) -> bool:
    return isinstance(value, str) or (isinstance(value, dict) and set(value) == {"json_file", "field"}
                                      and all(isinstance(v, str) for v in value.values()))


def _is_strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _is_string_lists(keys: set):
    """A check: an object whose fields, among ``keys``, are each a list of strings."""
    return lambda value: isinstance(value, dict) and set(value) <= keys and all(map(_is_strings, value.values()))


def _are_seconds(value) -> bool:
    return isinstance(value, dict) and set(value) <= {"startup", "case"} and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < float("inf") for v in value.values())


def _is_build(value) -> bool:
    return value == {} or (isinstance(value, dict) and _is_command(value.get("command")) and "{output}" in value["command"]
                           and isinstance(value.get("output"), str) and bool(value["output"])
                           and _is_strings(value.get("inputs", [])))


def _is_row(value) -> bool:
    return (isinstance(value, dict) and isinstance(value.get("name"), str) and bool(value["name"])
            and _is_command(value.get("command")) and isinstance(value.get("doc", ""), str)
            and _is_command(value.get("device_kinds", ["cpu"])))  # a non-empty list of strings, like a command


def _is_command(value) -> bool:
    """A non-empty list of strings."""
    return _is_strings(value) and bool(value)


# --- Requirements and the build step ---------------------------------------------------------------

def program_path(row: Row, program: str) -> str | None:
    """The path to run: the build output where the program is it (:func:`build_output`); a
    program with a slash is relative to the folder; others come from PATH."""
    if row.build and program == row.build["output"]:
        path = build_output(row)
        return str(path) if path.exists() else None
    if "/" in program:
        path = row.folder / program
        return str(path) if path.exists() else None
    return shutil.which(program)


def build_output(row: Row) -> Path:
    """Where the build step writes: in the backend's folder, except for the backends shipped
    inside an installed bnconform, whose compiled file goes to the user cache
    (``~/.cache/bnconform/builds/<folder hash>/``, ``$XDG_CACHE_HOME`` if set), never into
    site-packages."""
    if SHIPPED.resolve() not in row.folder.resolve().parents:
        return row.folder / row.build["output"]
    return user_cache("builds") / hashlib.sha256(str(row.folder.resolve()).encode()).hexdigest()[:16] / row.build["output"]


def _build_outputs_stale(row: Row) -> bool:
    build = row.build
    if not build:
        return False
    output = build_output(row)
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
        output = build_output(row)
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
