"""Planning the conformance matrix: which (case, adapter, device) cells a run contains, and which
of them the controller can settle itself without starting any backend process.

A cell is *presettled* when its verdict follows from data the controller already has:

* unavailable -- a distribution the adapter ``requires`` is not installed, its own Python
  environment cannot be built (bnconform.execution.environments), or the cell's device
  is a GPU kind and this machine has no NVIDIA driver (both answered by
  :mod:`bnconform.execution.selection`, which imports no framework);
* unsupported -- the adapter class's declared ``capabilities`` cannot express the case
  (:func:`bnconform.judging.capabilities.unsupported_reason`; adapter modules import no framework, so
  loading the class is cheap).

Every other cell travels to a host process, where the adapter's residual ``supports()`` still runs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from ..adapters.exec_backend import ExecAdapter
from ..adapters.registry import resolve
from ..judging.verdict import Verdict, cell_id
from .adapter_classes import adapter_class, device_kinds
from .case_cache import load_case
from .environments import EnvironmentBuildError, announce, ensure, environment_of, recent_failure
from .selection import device_present, missing_module


@dataclass(frozen=True)
class Cell:
    """One unit of the matrix; ``cell_id`` reads like ``momentum/decay_0.9[torch.nn-cpu]``."""

    case_path: str
    case_id: str
    family: str
    adapter: str
    device: str
    stepwise: bool = False  # run a stateful API's steps each from the expected state (judge(..., stepwise))

    @property
    def cell_id(self) -> str:
        return cell_id(self.case_id, self.adapter, self.device)


def case_files(root: Path, families=None) -> list[Path]:
    """Every case file under ``root`` (``<family>/<name>.json``; schema.json is not a case)."""
    paths = (p for p in Path(root).rglob("*.json") if p.name != "schema.json")
    return sorted(p for p in paths if not families or p.relative_to(root).parts[0] in families)


def case_families(root: Path) -> list[str]:
    """The family directories under ``root`` that hold case files, sorted."""
    return sorted(p.name for p in Path(root).iterdir() if p.is_dir() and any(p.glob("*.json")))


def unknown_families(root: Path, asked) -> tuple[list[str], list[str]]:
    """(every family under ``root``, the asked-for names that are not among them)."""
    families = case_families(root) if Path(root).is_dir() else []
    return families, [f for f in asked or [] if f not in families]


def discover_cases(root: Path, families=None) -> list:
    """Every case under ``root``, validated (raises CaseError on the first bad file)."""
    return [load_case(p) for p in case_files(root, families)]


def plan(cases, adapters, devices=None, stepwise: bool = False) -> list[Cell]:
    """Cells for every adapter x device kind of that adapter (filtered by ``devices``) x case.

    An adapter none of whose device kinds is among ``devices`` (torch.nn.SyncBatchNorm on a machine
    without a GPU) gets the cells of its first kind, which settle as unavailable with the reason,
    so a selected backend never vanishes from a report."""
    cells = []
    for name in adapters:
        for device in planned_kinds(name, devices):
            cells += [Cell(str(c.path), c.id, c.family, name, device, stepwise) for c in cases]
    return cells


def planned_kinds(name: str, devices=None) -> list[str]:
    """The device kinds :func:`plan` gives the adapter's cells (``bnconform run`` and the pytest
    plugin both ask this, so they plan the same cells)."""
    return [d for d in device_kinds(name) if not devices or d in devices] or list(device_kinds(name))[:1]


@functools.lru_cache(maxsize=None)
def missing_requirement(name: str) -> str | None:
    """Why the adapter cannot run here for lack of an installed module or program (a compiler),
    without importing it."""
    cls = adapter_class(name)
    if cls is not None and issubclass(cls, ExecAdapter):  # an executable: its manifest says what it needs
        return cls.missing()
    if cls is None:
        return None
    env = environment_of(name, cls)
    if env is not None:  # its modules live in its own environment (built on first use), not here
        failure = recent_failure(env)
        return f"its environment {env.label} cannot be built: {failure}" if failure else None
    module = missing_module(cls.requires)
    if module is None:
        return cls.missing_tool()
    from ..adapters.base import install_advice

    return f"{module} is not installed" + install_advice(cls)


@functools.lru_cache(maxsize=None)
def environment_problem(name: str) -> str | None:
    """Why the adapter's own Python environment cannot be had (built first if need be, which takes
    seconds to minutes, announced on stderr), or None when it is ready."""
    env = environment_of(name)
    try:
        ensure(env, log=announce)
    except EnvironmentBuildError as exc:
        return f"its environment {env.label} ({' '.join(env.requirements)}) cannot be built: {exc}"
    return None


def presettle(cell: Cell, case=None) -> Verdict | None:
    """The cell's verdict when the controller can decide it alone (unavailable, unsupported), else None.

    ``case`` is the loaded case if the caller has it (it is loaded from ``cell.case_path`` otherwise).
    """
    cls = adapter_class(cell.adapter)
    if cls is None:
        return None  # a broken module: its host says why
    base = dict(case=cell.case_id, family=cell.family, adapter=cls.name or cell.adapter, device=cell.device)
    missing = missing_requirement(cell.adapter) or (environment_of(cell.adapter, cls) and environment_problem(cell.adapter))
    if missing:
        return Verdict(**base, status="unavailable", detail=missing)
    if not device_present(cell.device):
        note = f"; {cls.device_note}" if cls.device_note else ""
        return Verdict(**base, status="unavailable", detail=f"device {cell.device!r} not present here (no NVIDIA GPU){note}")
    from ..judging.judge import declared_reason

    reason = declared_reason(cls.capabilities, getattr(cls, "keeps_state", True), case or load_case(cell.case_path),
                             cell.device, cls.name)
    return Verdict(**base, status="unsupported", detail=reason) if reason else None


def adapter_metadata(name: str) -> dict:
    """What the report says about an adapter, from its class (no framework import)."""
    from ..judging.capabilities import describe

    cls = resolve(name)
    return {
        "framework": cls.framework, "extra": cls.extra, "notes": cls.notes,
        "device_kinds": list(cls.device_kinds), "doc": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "",
        "capabilities": describe(cls.capabilities) if _declares_capabilities(cls) else {},
        "decay_parameter": cls.decay_parameter, "mode": cls.execution_mode, "eager_row": cls.eager_row,
        "deviations": [{"name": d.name, "kind": d.kind, "applies_to": d.applies_to, "behaviour": d.behaviour.describe(),
                        "explanation": d.explanation, "link": d.link} for d in cls.deviations],
    }


def _declares_capabilities(cls) -> bool:
    """False for an executable backend that cannot start here: its capabilities come from its
    handshake, and the stand-in that lets its cells reach a host (every knob, every dtype) is not
    a declaration to report (its ``notes`` say why they are unknown)."""
    return not (issubclass(cls, ExecAdapter) and cls.handshake() is None)


def host_key(name: str) -> str:
    """Which host process serves the adapter: adapters of one distribution (bnconform's built-ins,
    or one plug-in) with the same ``environment`` share one, so each framework is imported once per
    environment (Keras 3 on its tensorflow backend shares TensorFlow's host, on jax the JAX
    family's, on torch torch's); ``isolated`` adapters and registered adapters whose module is
    broken get their own. Reads like ``bnconform[KERAS_BACKEND=jax,JAX_ENABLE_X64=1]``."""
    cls = adapter_class(name)
    if cls is None or getattr(cls, "isolated", False):
        return name
    distribution = cls.__module__.partition(".")[0]
    env = ",".join(f"{k}={v}" for k, v in sorted(cls.environment.items()))
    python = environment_of(name, cls)  # a Python environment of its own: never the same process as others
    own = f"@{python.label}-{python.key}" if python is not None else ""
    return (f"{distribution}[{env}]" if env else distribution) + own
