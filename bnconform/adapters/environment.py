"""How a backend declares a Python environment of its own (built by bnconform.execution.environments).

A :class:`PythonEnvironment` is pinned requirements on one Python version; its ``key`` (a hash of
both and of bnconform's base requirements) names its folder under :func:`envs_root`, so equal
declarations share one environment and a changed pin gets a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

# bnconform's own dependencies without framework extras (pyproject's [project] dependencies; the
# numpy floor is the one the TF1-era stack allows).
BASE_REQUIREMENTS = ("numpy>=1.23", "ml_dtypes>=0.3", "jsonschema>=4.18", "pyyaml>=6")
MARKER = "bnconform-env.json"  # written last by a build: a folder without it is incomplete


@dataclass(frozen=True)
class PythonEnvironment:
    """A backend's environment: ``requirements`` (pip syntax, pinned) on Python ``python``.

    ``label`` names the folder for people (``legacy-tf``, ``torch-2.1.2``); the key decides reuse."""

    label: str
    requirements: tuple[str, ...]
    python: str = field(default_factory=lambda: f"{sys.version_info.major}.{sys.version_info.minor}")

    @property
    def key(self) -> str:
        text = json.dumps([self.python, sorted(self.requirements), sorted(BASE_REQUIREMENTS)])
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def path(self) -> Path:
        return envs_root() / f"{self.label}-{self.key}"

    @property
    def interpreter(self) -> Path:
        return self.path / "bin" / "python"

    def with_pins(self, pins: dict[str, str], label: str, extra: tuple[str, ...] = ()) -> PythonEnvironment:
        """The same environment with ``name==version`` for each of ``pins`` instead of what it asked of
        those distributions, plus ``extra`` requirements (a version sweep)."""
        names = {distribution_name(n) for n in pins}
        kept = [r for r in self.requirements if distribution_name(r) not in names]
        pinned = tuple(f"{n}=={v}" for n, v in pins.items())
        return PythonEnvironment(label, tuple(kept) + pinned + tuple(extra), self.python)

    def ready(self) -> bool:
        return (self.path / MARKER).is_file()


def distribution_name(requirement: str) -> str:
    """'tensorflow==2.12.1' -> 'tensorflow' (the name before any version or marker)."""
    for stop in "<>=!~;[ ":
        requirement = requirement.split(stop)[0]
    return requirement.strip().lower().replace("_", "-")


def user_cache(name: str) -> Path:
    """``$XDG_CACHE_HOME/bnconform/<name>`` (``~/.cache/bnconform/<name>`` where it is unset): where
    bnconform keeps what it builds or caches for this user (environments, compiled kernels, exported
    artifacts), never inside a checkout or an installed package."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bnconform" / name


def cache_switched_off(variable: str) -> bool:
    """Whether the environment variable that governs one of bnconform's caches says off / 0 / no."""
    return os.environ.get(variable, "").lower() in ("0", "off", "no")


def cache_folder(variable: str, name: str) -> Path | None:
    """The folder a cache keeps its files in: None where ``variable`` says off / 0 / no, the
    folder it names where it names one, else ``user_cache(name)``."""
    if cache_switched_off(variable):
        return None
    return Path(os.environ[variable]) if os.environ.get(variable) else user_cache(name)


def store_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place (a concurrent
    reader sees the whole file or none); any OSError leaves the cache without it."""
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".partial-")
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except OSError:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)


def envs_root() -> Path:
    if os.environ.get("BNCONFORM_ENVS"):
        return Path(os.environ["BNCONFORM_ENVS"])
    return user_cache("envs")
