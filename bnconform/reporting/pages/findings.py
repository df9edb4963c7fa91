"""Findings: every observed deviation, ranked by harm (defect, precision, dtype, edge), one line each.

A finding is one declared deviation (name, kind, behaviour, link) observed in at least one cell;
backends sharing the same declaration (e.g. torch.nn and torch.functional) share one finding.
Unexpected fail / error cells are not findings: they are listed on their own, first.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field

from ...judging.verdict import DEVIATION_KINDS


@dataclass
class Finding:
    """One deviation and the cells where it was observed (``cells``: (adapter, device, case))."""

    name: str
    kind: str
    behaviour: str
    link: str
    backends: list[str] = field(default_factory=list)
    cells: list[tuple[str, str, str]] = field(default_factory=list)
    worst: str = "—"

    def repro(self) -> str:
        """The command that reproduces one cell (the first case of the first backend, CPU preferred)."""
        adapter, _, case = min(self.cells, key=lambda c: (c[0] != self.backends[0], c[1] != "cpu", c[2]))
        return f"bnconform check cases/{case}.json --backend {adapter}"

    def line(self) -> str:
        return (f"- **{self.kind}** {', '.join(self.backends)} · `{self.name}`: {self.behaviour} · worst: {self.worst} · "
                f"{len(self.cells)} cell(s) · `{self.repro()}` · [upstream]({self.link})")


def findings(document: dict) -> list[Finding]:
    """Every observed deviation, grouped across backends, worst kind first, then most cells."""
    declared = {(name, d["name"]): d for name, meta in document["adapters"].items() for d in meta.get("deviations", [])}
    groups: dict[tuple, Finding] = {}
    by_group = collections.defaultdict(list)
    for v in document["verdicts"]:
        if v["status"] != "deviation":
            continue
        for name in v.get("deviations", []):
            d = declared.get((v["adapter"], name), {"kind": "defect", "behaviour": v["detail"], "link": ""})
            key = (name, d["kind"], d["behaviour"], d["link"])
            found = groups.setdefault(key, Finding(name, d["kind"], d["behaviour"].rstrip("."), d["link"]))
            if v["adapter"] not in found.backends:
                found.backends.append(v["adapter"])
            found.cells.append((v["adapter"], v["device"], v["case"]))
            by_group[key].append((v, d))
    for key, found in groups.items():
        found.backends.sort()
        found.worst = worst_error(by_group[key])
    rank = {k: i for i, k in enumerate(DEVIATION_KINDS)}
    return sorted(groups.values(), key=lambda f: (rank.get(f.kind, len(rank)), -len(f.cells), f.name))


def worst_error(cells) -> str:
    """The largest recorded error of the cells (max abs / rel over their mismatches), the raised
    exception for a Raises deviation, or the differing outputs when no numbers were recorded."""
    errors = [(m.get("max_abs_error"), m.get("max_rel_error"), m.get("output"), v["case"])
              for v, _ in cells for m in v.get("mismatches") or []]
    errors = [(_number(a), _number(r), o, c) for a, r, o, c in errors]
    if errors:
        a, r, output, case = max(errors, key=lambda e: (math.isnan(e[0]), e[0]))
        return f"{output} abs {a:.3g} / rel {r:.3g} (`{case}`)"
    effect = cells[0][1].get("effect", {})
    if "raises" in effect:
        return f"raises {effect['raises']}"
    if effect.get("outputs"):
        return "differs in " + ", ".join(effect["outputs"]) + " (no numbers recorded)"
    return "— (no numbers recorded)"


def _number(value) -> float:
    """Mismatch figures are floats, or repr strings for inf / nan (JSON has neither)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def unexpected(document: dict) -> list[dict]:
    """Fail and error cells: what the run did not expect, to be fixed or declared."""
    return sorted((v for v in document["verdicts"] if v["status"] in ("fail", "error")),
                  key=lambda v: (v["status"], v["adapter"], v["case"], v["device"]))


def unexpected_line(v: dict) -> str:
    return (f"- **{v['status']}** {v['adapter']} ({v['device']}) `{v['case']}`: {v['detail']} · "
            f"`bnconform check cases/{v['case']}.json --backend {v['adapter']}`")


def summary_line(document: dict) -> str:
    """Framework findings per kind (distinct deviations, with cells) and the unexpected cells apart."""
    found, bad = findings(document), unexpected(document)
    parts = []
    for kind in DEVIATION_KINDS:
        ofkind = [f for f in found if f.kind == kind]
        cells = sum(len(f.cells) for f in ofkind)
        label = "framework defects" if kind == "defect" else kind
        parts.append(f"{len(ofkind)} {label} ({cells} cells)")
    statuses = collections.Counter(v["status"] for v in document["verdicts"])
    parts.append(f"{len(bad)} unexpected failures ({statuses['fail']} fail, {statuses['error']} error)")
    return "**" + " · ".join(parts) + "**"
