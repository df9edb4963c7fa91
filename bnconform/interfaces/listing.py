"""``bnconform list``: every backend, answered from metadata (fast), or by importing it (--probe).

The metadata answer imports no framework: the version is the installed distribution's
(``importlib.metadata``) -- for a backend that runs in an environment of its own (tflearn,
mindspore.nn: docs/environments.md), the version that environment's build recorded, or "not built" --, "installed" means :func:`bnconform.execution.selection.missing_module` finds each
top-level module the adapter ``requires`` (``find_spec`` locates without importing), and devices are the declared
kinds present on this machine (:func:`bnconform.execution.selection.present_device_kinds`). It cannot see a
framework that is installed but broken; ``--probe`` imports each backend in its own process and
says why one is unavailable.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from ..adapters.base import install_advice
from ..adapters.environment import distribution_name
from ..adapters.exec_backend import ExecAdapter
from ..adapters.registry import BUILTIN, ENTRY_POINT_GROUP, RegistryError, known, resolve
from ..execution.environments import built_record
from ..execution.selection import missing_module, nvidia_present, present_device_kinds

WIDTH = 32  # the backend column: the longest built-in name (keras3.tensorflow.synchronized) and a space
HEADER = f"{'backend':{WIDTH}} {'framework':12} {'version':14} {'devices here':18} {'judged':8} {'source':30} status"
LAST_RESULTS = Path("reports") / "results.json"


def _plugin_sources() -> dict[str, str]:
    """Entry-point name -> the distribution that provides it."""
    found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    return {ep.name: f"plug-in {ep.dist.name if ep.dist else '?'}" for ep in found}


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def last_coverage(path: Path = LAST_RESULTS) -> dict[str, str]:
    """backend -> "judged/behaviours" from the last results.json here (bnconform.reporting.coverage);
    {} when there is none or it cannot be read (the column then shows "-")."""
    from ..reporting.results import ResultsError, read

    try:
        adapters = read(path)["adapters"] if path.is_file() else {}
    except ResultsError:
        return {}
    return {name: f"{c['judged']}/{c['behaviours']}" for name, meta in adapters.items() if (c := meta.get("coverage"))}


def metadata_row(name: str, source: str, judged: str = "-") -> str:
    """One line: backend, framework, version, devices present, behaviours judged in the last
    results, source, and installed or what to install."""
    try:
        cls = resolve(name)
    except RegistryError as exc:  # a module broken mid-edit: its cells will be errors saying so
        return f"{name:{WIDTH}} {'?':12} {'?':14} {'-':18} {judged:8} {source:30} adapter does not load: {exc}"
    missing = missing_module(cls.requires)
    status = (f"not installed: no module {missing}" + install_advice(cls) if missing
              else "installed (bnconform list --probe imports it)")
    version = _version(cls.framework)
    if issubclass(cls, ExecAdapter):  # an executable (docs/protocol.md): its manifest says what it needs
        reason, version = cls.missing(), cls.listed_version()
        status = f"not installed: {reason}" if reason else "installed (bnconform list --probe starts it)"
    if cls.python_environment is not None:
        version, status = own_environment(cls)
    devices = ",".join(present_device_kinds(cls.device_kinds)) or "-"
    return f"{name:{WIDTH}} {cls.framework:12} {version:14} {devices:18} {judged:8} {source:30} {status}"


def own_environment(cls) -> tuple[str, str]:
    """(version, status) of a backend that runs in an environment of its own: read from the record
    of that environment's build (no interpreter started), or what happens when it is not built."""
    env = cls.python_environment
    record = built_record(env)
    if record is None:
        return "not built", (f"runs in its own environment {env.label} ({', '.join(env.requirements)}), "
                             "built with uv on its first run or by `bnconform env sync`")
    packages = {distribution_name(name): v for name, v in record.get("packages", {}).items()}
    version = packages.get(distribution_name(cls.framework), "?")
    return version, f"installed in its own environment {env.path}"


def list_metadata() -> int:
    plugins, judged = _plugin_sources(), last_coverage()
    print(HEADER)
    for name in known():
        print(metadata_row(name, "built-in" if name in BUILTIN else plugins.get(name, "entry point"),
                           judged.get(name, "-")))
    if judged:
        print(f"judged: behaviours judged / behaviours in the suite, from {LAST_RESULTS} (docs/report.md)")
    gpu = "an NVIDIA driver is present" if nvidia_present() else "no NVIDIA driver, so cuda kinds are not listed"
    print(f"devices: {gpu}")
    return 0


def _probe(name: str) -> dict:
    """The host process's own answer (version, usable devices, why unavailable)."""
    from ..execution.controller import HostProcess

    process = HostProcess([name])
    try:
        return process.info(name)
    finally:
        process.close()


def list_probe(jobs: int) -> int:
    """Import each backend in its own process (``jobs`` at once) and print what it says."""
    from concurrent.futures import ThreadPoolExecutor

    names = list(known())
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as executor:
        infos = dict(zip(names, executor.map(_probe, names)))
    print(f"{'backend':{WIDTH}} {'version':14} {'devices':18} status")
    for name in names:
        info = infos[name]
        status = f"unavailable: {info['unavailable']}" if info.get("unavailable") else "available"
        devices = ",".join(info.get("devices") or []) or "-"
        print(f"{name:{WIDTH}} {info.get('version', '?'):14} {devices:18} {status}")
    return 0
