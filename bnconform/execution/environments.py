"""Python environments of their own for backends that cannot share the user's (issue 21).

A backend may declare a :class:`PythonEnvironment`: pinned requirements (tflearn needs
TensorFlow 2.12 and NumPy < 1.24; mindspore NumPy < 2; a version sweep pins ``torch==2.1.2``).
bnconform builds it with uv in the user cache directory, keyed by what it holds, and starts that
backend's host with the environment's interpreter. Nothing here touches the user's environment.

* **Where**: ``$XDG_CACHE_HOME/bnconform/envs/<label>-<key>`` (``~/.cache`` by default;
  ``BNCONFORM_ENVS`` overrides the folder), ``key`` = SHA-256 of the Python version and the
  requirements, base requirements included.
* **What**: the requirements, bnconform's base dependencies (:data:`BASE_REQUIREMENTS`), and
  bnconform itself: the host's ``PYTHONPATH`` holds a folder with one link to the very package
  the controller runs (:func:`source_path`), so a host always runs the controller's code, from a
  checkout or a wheel, and sees none of the user's other packages.
* **Never half-built**: the build holds an exclusive lock (two runs, or two xdist workers,
  building one environment wait for each other) and writes ``bnconform-env.json`` last; a folder
  without it is removed and built again.
* **Failures cost one backend**: a build that fails (no network, a pin that does not resolve) is
  remembered for :data:`RETRY_AFTER` seconds in ``<path>.failed`` with uv's last line, so the
  other hosts of the same run do not retry it; its cells are *unavailable* with that line.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from ..adapters.environment import BASE_REQUIREMENTS, MARKER, PythonEnvironment, envs_root

RETRY_AFTER = 600.0  # seconds a failed build is believed before it is tried again
BUILD_TIMEOUT = 1800.0  # a first build downloads frameworks (tensorflow 2.12: ~600 MB)


class EnvironmentBuildError(RuntimeError):
    """An environment that could not be built; the message is one line (uv's last)."""


def source_path() -> Path:
    """A folder holding only a link named ``bnconform`` to the package this process runs, to put on
    a host's PYTHONPATH (one per package location, so two checkouts never share it)."""
    package = Path(__file__).resolve().parents[1]
    folder = envs_root() / "source" / hashlib.sha256(str(package).encode()).hexdigest()[:12]
    link = folder / "bnconform"
    if not link.is_symlink() or link.resolve() != package:
        folder.mkdir(parents=True, exist_ok=True)
        temporary = folder / f".bnconform-{os.getpid()}"
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(package, target_is_directory=True)
        os.replace(temporary, link)  # atomic: a concurrent reader sees the old link or the new one
    return folder


def uv_command() -> str | None:
    """The uv executable: the one installed with bnconform (the ``uv`` package), else on PATH."""
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def announce(line: str) -> None:
    """Tell the person running bnconform about slow work (an environment being built) on stderr."""
    print(f"bnconform: {line}", file=sys.stderr, flush=True)


def _failure_file(env: PythonEnvironment) -> Path:
    """Where a failed build of ``env`` leaves its one-line reason."""
    return env.path.with_name(env.path.name + ".failed")


def recent_failure(env: PythonEnvironment) -> str | None:
    """The reason of a build that failed less than :data:`RETRY_AFTER` seconds ago, else None."""
    failed = _failure_file(env)
    try:
        if time.time() - failed.stat().st_mtime < RETRY_AFTER:
            return failed.read_text(encoding="utf-8").strip()
    except OSError:
        pass
    return None


def ensure(env: PythonEnvironment, log=None) -> Path:
    """The environment's interpreter, building the environment first when it is not complete.

    Raises :class:`EnvironmentBuildError` with one line when it cannot be built (or failed recently).
    ``log(text)`` hears about a build before it starts (they take seconds to minutes)."""
    if env.ready():
        return env.interpreter
    with _locked(env.path):
        if env.ready():  # built by another process while this one waited
            return env.interpreter
        reason = recent_failure(env)
        if reason:
            raise EnvironmentBuildError(reason)
        try:
            _build(env, log)
        except EnvironmentBuildError as exc:
            _failure_file(env).write_text(str(exc) + "\n", encoding="utf-8")
            shutil.rmtree(env.path, ignore_errors=True)
            raise
    return env.interpreter


def _build(env: PythonEnvironment, log) -> None:
    uv = uv_command()
    if uv is None:
        raise EnvironmentBuildError("uv is not installed (pip install uv), which builds the environment "
                                f"{env.label}: {' '.join(env.requirements)}")
    if log:
        log(f"building the environment {env.label} with uv ({' '.join(env.requirements)}) in {env.path}")
    shutil.rmtree(env.path, ignore_errors=True)  # a half-built folder from an interrupted build
    start = time.perf_counter()
    _uv(uv, "venv", "--quiet", "--python", env.python, str(env.path))
    _uv(uv, "pip", "install", "--quiet", "--python", str(env.interpreter), *env.requirements, *BASE_REQUIREMENTS)
    record = {"label": env.label, "python": env.python, "requirements": list(env.requirements),
              "base": list(BASE_REQUIREMENTS), "built": time.strftime("%Y-%m-%d %H:%M:%S"),
              "seconds": round(time.perf_counter() - start, 1), "packages": _frozen(uv, env)}
    (env.path / MARKER).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def _uv(uv: str, *arguments: str) -> None:
    """Run uv; a failure or a timeout raises with its last line of output."""
    try:
        done = subprocess.run([uv, *arguments], capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False,
                              env={**os.environ, "UV_NO_PROGRESS": "1"})
    except subprocess.TimeoutExpired:
        raise EnvironmentBuildError(f"uv {arguments[0]} took longer than {BUILD_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        raise EnvironmentBuildError(f"uv {' '.join(arguments[:2])} failed: {_summary(done.stderr + done.stdout, done.returncode)}")


def _summary(output: str, returncode: int) -> str:
    """uv's error in one line: its ``error:`` line and the first cause under it (the unreachable
    index, the requirement that does not resolve), else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [i for i, line in enumerate(lines) if line.startswith(("error:", "×"))]
    if not errors:
        return lines[-1] if lines else f"exit {returncode}"
    first = lines[errors[0]].removeprefix("error:").lstrip("× ").strip()
    cause = next((line for line in lines[errors[0] + 1:] if line.startswith(("cause:", "╰─▶"))), "")
    return f"{first}: {cause.removeprefix('cause:').lstrip('╰─▶ ').strip()}" if cause else first


def _frozen(uv: str, env: PythonEnvironment) -> dict[str, str]:
    """name -> version of every package installed in the environment."""
    done = subprocess.run([uv, "pip", "freeze", "--python", str(env.interpreter)], capture_output=True, text=True,
                          check=False)
    pairs = (line.split("==", 1) for line in done.stdout.splitlines() if "==" in line)
    return {name.lower(): version for name, version in pairs}


def built_record(env: PythonEnvironment) -> dict | None:
    """The record a complete build of ``env`` wrote (requirements, packages and their versions), or
    None when it is not built (or only half built)."""
    if not env.ready():
        return None
    try:
        return json.loads((env.path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def installed() -> list[dict]:
    """Every environment folder under :func:`envs_root`: its record (``path`` added), or a line
    saying it is incomplete."""
    found = []
    for path in sorted(envs_root().glob("*")) if envs_root().is_dir() else []:
        if not path.is_dir() or path.name == "source":
            continue
        try:
            record = json.loads((path / MARKER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = {"label": path.name, "incomplete": True}
        found.append({**record, "path": str(path)})
    return found


_OVERRIDES: dict[str, PythonEnvironment] = {}  # adapter name -> the environment a version sweep runs it in


def run_in(name: str, env: PythonEnvironment | None) -> None:
    """Run adapter ``name`` in ``env`` from now on in this process (None: its own declaration again)."""
    if env is None:
        _OVERRIDES.pop(name, None)
    else:
        _OVERRIDES[name] = env


def environment_of(name: str, cls=None) -> PythonEnvironment | None:
    """The environment adapter ``name``'s host runs in: a sweep's override, else what its class
    declares (``cls`` when the caller has it), else None (this process's own environment)."""
    if name in _OVERRIDES:
        return _OVERRIDES[name]
    if cls is None:
        from .adapter_classes import adapter_class

        cls = adapter_class(name)
    return getattr(cls, "python_environment", None)


def host_command(env: PythonEnvironment | None, log=None) -> tuple[list[str], dict[str, str]]:
    """(the interpreter command of a host in ``env`` -- sys.executable without one --, the extra
    process environment it needs: bnconform on PYTHONPATH, nothing else of this environment)."""
    if env is None:
        return [sys.executable], {}
    return [str(ensure(env, log))], {"PYTHONPATH": str(source_path()), "PYTHONNOUSERSITE": "1"}
