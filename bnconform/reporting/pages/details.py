"""reports/conformance-details.md: everything per backend that the main page summarizes.

Per backend: framework and version, devices, counts; the semantics profile with its evidence
cases; every declared deviation (kind, cells observed, applies-to text, behaviour, explanation,
link); every fail and error cell; unsupported and unavailable reasons with their counts. Then
every finding, in the main page's order, without the line budget.
"""

from __future__ import annotations

import collections

from ..profile import ROWS, build_profile
from .common import count_text
from .findings import findings, unexpected_line


def render_details(document: dict) -> str:
    profile = build_profile(document)
    by_adapter = collections.defaultdict(list)
    for v in document["verdicts"]:
        by_adapter[v["adapter"]].append(v)
    lines = ["# bnconform conformance details", "", "The summary is [conformance.md](conformance.md).", ""]
    for name in sorted(by_adapter):
        lines += _backend(name, document["adapters"].get(name, {}), by_adapter[name], profile.get(name))
    lines += ["## All findings", ""] + [f.line() for f in findings(document)]
    return "\n".join(lines).rstrip() + "\n"


def _backend(name: str, meta: dict, verdicts, profile) -> list[str]:
    devices = ", ".join(meta.get("devices") or []) or "none"
    lines = [f"## {name}", "", (f"{meta.get('framework', '?')} {meta.get('version', '?')}; devices here: {devices}; "
                                f"{count_text(verdicts)}"), ""]
    lines += [text for text in (meta.get("doc"), meta.get("notes")) if text]
    if meta.get("unavailable"):
        lines.append(f"Unavailable: {meta['unavailable']}")
    lines.append("")
    if profile:
        lines += ["Profile:", ""] + [f"- {title}: {profile[key].value} ({profile[key].status}; evidence: "
                                     f"{', '.join(f'`{c}`' for c in profile[key].evidence[:6]) or 'none'})"
                                     for key, title in ROWS] + [""]
    return lines + _deviations(meta, verdicts) + _cells(verdicts)


def _deviations(meta: dict, verdicts) -> list[str]:
    seen = collections.Counter(name for v in verdicts if v["status"] == "deviation" for name in v.get("deviations", []))
    lines = []
    for d in meta.get("deviations", []):
        lines.append(f"- **{d['name']}** ({d.get('kind', '?')}; {seen[d['name']]} cell(s); applies to "
                     f"{d['applies_to']}): {d['behaviour']}. {d['explanation']} [{d['link']}]({d['link']})")
    return lines + ([""] if lines else [])


def _cells(verdicts) -> list[str]:
    lines = [unexpected_line(v) for v in verdicts if v["status"] in ("fail", "error")]
    reasons = collections.Counter((v["status"], v["detail"]) for v in verdicts if v["status"] in ("unsupported", "unavailable"))
    lines += [f"- {status} ({count} cell(s)): {reason}" for (status, reason), count in reasons.most_common()]
    return lines + _compared(verdicts) + [""]


def _compared(verdicts) -> list[str]:
    """Which outputs the cells that ran compared (a case may omit outputs; an API may not expose some)."""
    groups = collections.defaultdict(list)
    for v in verdicts:
        if v["status"] in ("pass", "deviation"):
            groups[tuple(v.get("compared", []))].append(v["case"])
    return [f"- compared {', '.join(outputs) or 'nothing'} in {len(cases)} cell(s)"
            + (f" (e.g. `{cases[0]}`)" if len(groups) > 1 else "")
            for outputs, cases in sorted(groups.items(), key=lambda kv: -len(kv[1]))]
