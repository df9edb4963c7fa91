"""``reports/history.md``: since which version a framework behaves the way it does, and which
upgrade changed it, from the results of version sweeps (``bnconform run --versions``).

Input: every ``results.json`` under the versions folder (one per framework version, written by
the sweep). For each backend, versions are ordered by release number, and each *behaviour* (a case
id without its running-variance twin suffix, docs/report.md) gets one verdict per version: the
statuses of its cells and the deviations they matched, e.g. ``pass`` or ``deviation
(torch-float16-...)``. The page lists

* per backend, the behaviours whose verdict changed between versions: the verdict in each version,
  the first version where it changed and the case that shows it (its status before and after);
* per declared finding (deviation), the versions in which a cell matched it -- a finding that a
  version no longer shows is a *fail* cell of that version, so it is listed among the changes too;
* how many judged behaviours hold the same verdict in every version.
"""

from __future__ import annotations

import collections
from pathlib import Path

from ..judging.declarations import release
from .coverage import behaviour as behaviour_of
from .results import read, verdicts_of

JUDGED = ("pass", "deviation", "fail", "error")


def load_versions(root: Path) -> dict[str, dict[str, list]]:
    """backend -> version -> its verdicts, from every results.json under ``root``."""
    found: dict[str, dict[str, list]] = collections.defaultdict(dict)
    for path in sorted(Path(root).glob("*/results.json")):
        document = read(path)
        for verdict in verdicts_of(document):
            # cells settled without a host (unsupported, unavailable) carry no version: the host's
            # report of that backend, else the version the sweep asked for, says which it was
            version = (document["adapters"].get(verdict.adapter, {}).get("version") or verdict.version
                       or document["runs"][-1]["selection"].get("versions") or "?")
            found[verdict.adapter].setdefault(version, []).append(verdict)
    return found


def _cell_word(verdict) -> str:
    """A cell's status with the deviations it matched: ``deviation (name)``."""
    return verdict.status + (f" ({', '.join(verdict.deviations)})" if verdict.deviations else "")


def _verdict_word(verdicts) -> str:
    """One behaviour's verdict in one version: its judged cells' words, each once."""
    return "; ".join(sorted({_cell_word(v) for v in verdicts if v.status in JUDGED})) or "not judged"


def behaviour_rows(by_version: dict[str, list]) -> tuple[list[str], dict[str, dict[str, str]], dict]:
    """(versions in release order, behaviour -> version -> verdict word, behaviour -> version ->
    {case: status})."""
    versions = sorted(by_version, key=release)
    words: dict[str, dict[str, str]] = collections.defaultdict(dict)
    cells: dict[str, dict[str, dict]] = collections.defaultdict(lambda: collections.defaultdict(dict))
    for version in versions:
        grouped = collections.defaultdict(list)
        for v in by_version[version]:
            grouped[behaviour_of(v.case)].append(v)
            cells[behaviour_of(v.case)][version][v.case] = _cell_word(v)
        for behaviour, verdicts in grouped.items():
            words[behaviour][version] = _verdict_word(verdicts)
    return versions, words, cells


def first_change(versions, row: dict[str, str], cells: dict) -> tuple[str, str] | None:
    """(the first version whose verdict differs from the version before, the case that shows it
    with its status before -> after), or None when every version agrees."""
    for before, after in zip(versions, versions[1:]):
        if row.get(before) != row.get(after):
            old, new = cells.get(before, {}), cells.get(after, {})
            case = next((c for c in sorted(new) if old.get(c) != new.get(c)), sorted(new or old)[0])
            return after, f"{case}: {old.get(case, 'absent')} -> {new.get(case, 'absent')}"
    return None


def findings(versions, by_version: dict[str, list]) -> dict[str, list[str]]:
    """Declared finding -> the versions (in order) in which a cell matched it."""
    seen = collections.defaultdict(set)
    for version, verdicts in by_version.items():
        for v in verdicts:
            for name in v.deviations or ():
                seen[name].add(version)
    return {name: [v for v in versions if v in found] for name, found in sorted(seen.items())}


def _ranges(versions, held) -> str:
    """'2.1.2 - 2.9.1' style spans of consecutive versions in ``held``."""
    spans, current = [], []
    for version in versions:
        if version in held:
            current.append(version)
        elif current:
            spans.append(current)
            current = []
    spans += [current] if current else []
    return ", ".join(s[0] if len(s) == 1 else f"{s[0]} - {s[-1]}" for s in spans) or "none"


def backend_section(name: str, by_version: dict[str, list]) -> list[str]:
    versions, words, cells = behaviour_rows(by_version)
    judged = [b for b, row in words.items() if any(w != "not judged" for w in row.values())]
    changed = {b: change for b in sorted(judged) if (change := first_change(versions, words[b], cells[b]))}
    lines = [f"## {name}", "", f"Versions: {', '.join(versions)}. Behaviours judged in at least one version: "
             f"{len(judged)}; the same verdict in every version: {len(judged) - len(changed)}; changed: {len(changed)}.",
             ""]
    if changed:
        lines += ["| behaviour | " + " | ".join(versions) + " | first changed in | case (before -> after) |",
                  "|---|" + "---|" * len(versions) + "---|---|"]
        for behaviour, (version, case) in changed.items():
            row = " | ".join(words[behaviour].get(v, "absent") for v in versions)
            lines.append(f"| {behaviour} | {row} | {version} | {case} |")
        lines.append("")
    found = findings(versions, by_version)
    if found:
        lines += ["| declared finding | holds in | not seen in |", "|---|---|---|"]
        lines += [f"| {f} | {_ranges(versions, set(held))} | {_ranges(versions, set(versions) - set(held))} |"
                  for f, held in found.items()]
        lines.append("")
    return lines


def render(root: Path) -> str:
    """The history page of every backend swept under ``root``."""
    data = load_versions(root)
    lines = ["# Version history", "",
             f"Generated by `bnconform history` from the version sweeps under `{root}` (`bnconform run --backend B "
             "--versions V1,V2,...`): each version ran in an environment of its own with the same vectors. A "
             "behaviour's verdict is the set of its cells' statuses with the deviations they matched; only "
             "behaviours whose verdict changed between versions are listed.", ""]
    for name in sorted(data):
        lines += backend_section(name, data[name])
    if not data:
        lines.append("No version sweep results found.")
    return "\n".join(lines).rstrip() + "\n"
