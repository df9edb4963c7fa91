"""Planning the conformance matrix: which (case, adapter, device) cells a run contains."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .adapters.registry import RegistryError, known, resolve
from .validation import load_case


@dataclass(frozen=True)
class Cell:
    """One unit of the matrix; ``cell_id`` reads like ``momentum/decay_0.9[torch.nn-cpu]``."""

    case_path: str
    case_id: str
    family: str
    adapter: str
    device: str

    @property
    def cell_id(self) -> str:
        return f"{self.case_id}[{self.adapter}-{self.device}]"


def discover_cases(root: Path, families=None) -> list:
    """Every case under ``root`` (validated; raises CaseError on the first bad file)."""
    paths = sorted(p for p in Path(root).glob("*/*.json") if not families or p.parent.name in families)
    return [load_case(p) for p in paths]


def select_adapters(backends=None, adhoc=(), all_by_default: bool = True) -> list[str]:
    """Registered names (all by default), checked, plus ad hoc module:Class paths."""
    names = list(backends) if backends else (list(known()) if all_by_default else [])
    for name in [*names, *adhoc]:
        if name not in known():
            resolve(name)  # raises RegistryError with the list of known names
    return names + [a for a in adhoc if a not in names]


def _device_kinds(name: str) -> tuple[str, ...]:
    """The adapter's device kinds; ("cpu",) for a registered adapter whose module is broken, so
    its worker reports the import failure as error cells instead of stopping the whole run."""
    try:
        return resolve(name).device_kinds
    except RegistryError:
        if name in known():
            return ("cpu",)
        raise


def plan(cases, adapters, devices=None) -> list[Cell]:
    """Cells for every case x adapter x device kind of that adapter (filtered by ``devices``)."""
    cells = []
    for name in adapters:
        kinds = [d for d in _device_kinds(name) if not devices or d in devices]
        for device in kinds:
            cells += [Cell(c.path, c.id, c.family, name, device) for c in cases]
    return cells


def adapter_metadata(name: str) -> dict:
    """What the report says about an adapter, from its class (no framework import)."""
    from .capabilities import describe

    cls = resolve(name)
    return {
        "framework": cls.framework, "extra": cls.extra, "notes": cls.notes,
        "device_kinds": list(cls.device_kinds), "doc": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "",
        "capabilities": describe(cls.capabilities), "decay_parameter": cls.decay_parameter,
        "deviations": [{"name": d.name, "kind": d.kind, "applies_to": d.applies_to, "behaviour": d.behaviour.describe(),
                        "explanation": d.explanation, "link": d.link} for d in cls.deviations],
    }
