"""reports/results.json: building, reading, merging and diffing machine-readable results.

The document holds the environment (platform, Python, framework versions, devices), the
adapters' declared deviations, and one verdict per cell. Merging documents from several
machines (a CPU CI run and a GPU run) keeps every cell; for a cell present in both, the later
document wins.
"""

from __future__ import annotations

import datetime
import json
import platform
import sys
from pathlib import Path

from . import __version__
from .verdict import Verdict
from .matrix import adapter_metadata

RESULTS_FORMAT = 1


def environment() -> dict:
    """Where this run happened (for the report header)."""
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "platform": platform.platform(), "machine": platform.machine(),
            "python": sys.version.split()[0], "bnconform": __version__}


def describe_cases(verdicts, case_root: Path) -> dict[str, str]:
    """case id -> its one-line description (a case id is its path under the case root)."""
    descriptions = {}
    for case_id in sorted({v.case for v in verdicts}):
        try:
            descriptions[case_id] = json.loads((case_root / f"{case_id}.json").read_text(encoding="utf-8"))["description"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a custom case outside the root: the report shows its id only
    return descriptions


def build(verdicts: list[Verdict], infos: dict[str, dict], selection: dict, case_root: Path = Path("cases")) -> dict:
    """The results document; ``infos`` maps adapter name -> worker info (version, devices)."""
    adapters = {}
    for name in sorted({v.adapter for v in verdicts} | set(infos)):
        meta = adapter_metadata(name) if _resolvable(name) else {}
        info = infos.get(name, {})
        version = info.get("version") or next((v.version for v in verdicts if v.adapter == name and v.version), "?")
        ran_on = sorted({v.device for v in verdicts if v.adapter == name and v.status != "unavailable"})
        adapters[name] = {**meta, "version": version, "devices": info.get("devices", ran_on),
                          "defaults": info.get("defaults", {}),
                          "unavailable": info.get("unavailable") or _unavailable(verdicts, name, ran_on)}
    return {"format": RESULTS_FORMAT, "runs": [{**environment(), "selection": selection}],
            "adapters": adapters, "cases": describe_cases(verdicts, Path(case_root)),
            "verdicts": [v.to_json() for v in verdicts]}


def _unavailable(verdicts, name: str, ran_on) -> str | None:
    """The framework-level reason, when no cell of the adapter could run at all."""
    if ran_on:
        return None
    return next((v.detail for v in verdicts if v.adapter == name and v.status == "unavailable"), None)


def _resolvable(name: str) -> bool:
    from .adapters.registry import RegistryError, resolve

    try:
        resolve(name)
        return True
    except RegistryError:
        return False


def write(document: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1, allow_nan=False) + "\n", encoding="utf-8")


class ResultsError(ValueError):
    """A results file that cannot be read; str() is the one line to show."""


def read(path: Path) -> dict:
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}: Expected: a bnconform results.json. Received: {exc}") from None
    if not isinstance(document, dict) or document.get("format") != RESULTS_FORMAT or "verdicts" not in document:
        raise ResultsError(f"{path}: Expected: a results document with format {RESULTS_FORMAT}. "
                           f"Received: format {document.get('format') if isinstance(document, dict) else None!r}")
    return document


def merge(documents: list[dict]) -> dict:
    """One matrix from several runs; per cell, the later document wins."""
    cells, adapters, runs, cases = {}, {}, [], {}
    for document in documents:
        runs += document["runs"]
        cases.update(document.get("cases", {}))
        for name, meta in document["adapters"].items():
            merged = adapters.setdefault(name, dict(meta))
            merged["devices"] = sorted(set(merged.get("devices") or []) | set(meta.get("devices") or []))
        for verdict in document["verdicts"]:
            key = (verdict["case"], verdict["adapter"], verdict["device"])
            if key not in cells or verdict["status"] != "unavailable":
                cells[key] = verdict
    return {"format": RESULTS_FORMAT, "runs": runs, "adapters": adapters, "cases": cases,
            "verdicts": list(cells.values())}


def verdicts_of(document: dict) -> list[Verdict]:
    return [Verdict.from_json(v) for v in document["verdicts"]]


def diff(old: dict, new: dict) -> list[str]:
    """One line per cell whose status or detail changed between two result documents."""
    def index(document):
        return {(v["case"], v["adapter"], v["device"]): v for v in document["verdicts"]}

    before, after = index(old), index(new)
    lines = []
    for key in sorted(before.keys() | after.keys()):
        a, b = before.get(key), after.get(key)
        cell = f"{key[0]}[{key[1]}-{key[2]}]"
        if a is None or b is None:
            lines.append(f"{cell}: {'added' if a is None else 'removed'} ({(b or a)['status']})")
        elif a["status"] != b["status"]:
            lines.append(f"{cell}: {a['status']} -> {b['status']}: {b['detail'] or a['detail']}")
        elif a["detail"] != b["detail"] and a["status"] in ("fail", "error"):
            lines.append(f"{cell}: {a['status']} changed: {a['detail']} -> {b['detail']}")
    return lines
