"""reports/conformance.md: the page a user reads first, rendered from a results document.

Sections: header (where and with what it ran), verdict legend, a matrix of backends x
families with counts per verdict, "Where frameworks disagree" (cases grouped by what each
backend does), then per backend every fail and deviation with its explanation and numbers.
"""

from __future__ import annotations

import collections

from .verdict import STATUSES

_SYMBOL = {"pass": "✓", "fail": "✗", "deviation": "D", "unsupported": "U", "unavailable": "–", "error": "E"}
_LEGEND = ("✓ pass: agrees with the float64 oracle within the case tolerance · ✗ fail: disagrees (numbers below) · "
           "D deviation: a documented difference, declared by the adapter and re-verified this run · "
           "U unsupported: the API cannot express the case (reason below) · – unavailable: framework or device "
           "absent on this machine · E error: unexpected exception or crash")


def _row_key(v: dict) -> str:
    return f"{v['adapter']} ({v['device']})"


def _counts(verdicts) -> str:
    counts = collections.Counter(v["status"] for v in verdicts)
    return " ".join(f"{counts[s]}{_SYMBOL[s]}" for s in STATUSES if counts[s]) or "·"


def _header(document: dict) -> list[str]:
    lines = ["# bnconform conformance report", ""]
    for run in document["runs"]:
        sel = run.get("selection", {})
        lines.append(f"- Run {run['date']} on `{run['platform']}` ({run['machine']}), Python {run['python']}, "
                     f"bnconform {run['bnconform']}" + (f"; selection: {sel}" if sel else ""))
    lines += ["", "| backend | framework | version | devices here | notes |", "|---|---|---|---|---|"]
    for name, meta in sorted(document["adapters"].items()):
        devices = ", ".join(meta.get("devices") or []) or "none"
        status = f"unavailable: {meta['unavailable']}" if meta.get("unavailable") else meta.get("notes", "")
        lines.append(f"| {name} | {meta.get('framework', '?')} | {meta.get('version', '?')} | {devices} | {status} |")
    return lines + ["", _LEGEND, ""]


def _intro(document: dict) -> list[str]:
    """The first paragraph: what was compared, and the bottom line."""
    verdicts = document["verdicts"]
    counts = collections.Counter(v["status"] for v in verdicts)
    ran = {v["adapter"] for v in verdicts if v["status"] not in ("unavailable",)}
    return [f"This report runs **{len({v['case'] for v in verdicts})} golden cases** through **{len(ran)} Batch "
            f"Normalization implementations** and compares every output with a NumPy float64 oracle "
            f"(docs/semantics.md). Of {len(verdicts)} cells: {counts['pass']} agree, {counts['deviation']} differ "
            f"in a documented, re-verified way, {counts['fail']} differ unexpectedly, {counts['error']} errored, "
            f"{counts['unsupported']} cannot be expressed by the API, {counts['unavailable']} could not run here "
            f"(framework or device absent). Start with **Where frameworks disagree**.", ""]


def _matrix(verdicts) -> list[str]:
    families = sorted({v["family"] for v in verdicts})
    rows = collections.defaultdict(lambda: collections.defaultdict(list))
    for v in verdicts:
        rows[_row_key(v)][v["family"]].append(v)
    absent = sorted(r for r in rows if all(v["status"] == "unavailable" for f in rows[r] for v in rows[r][f]))
    rows = {r: rows[r] for r in rows if r not in absent}
    lines = ["## Matrix", "", "| backend | " + " | ".join(families) + " | all |",
             "|---|" + "---|" * (len(families) + 1)]
    for row in sorted(rows):
        cells = [_counts(rows[row][f]) for f in families]
        everything = [v for f in families for v in rows[row][f]]
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {_counts(everything)} |")
    if absent:
        lines += ["", "Not run here (every cell unavailable; reasons under Per backend): " + ", ".join(absent) + "."]
    return lines + [""]


def _behaviour(v: dict, deviations: dict) -> str:
    """A short phrase for what one backend did on one case."""
    status = v["status"]
    if status == "pass":
        return "agrees with the oracle"
    if status == "deviation":
        return deviations.get((v["adapter"], v.get("deviation")), v["detail"]).rstrip(".")
    if status == "fail":
        return "differs: " + v["detail"].split(" (")[0]
    return f"{status}: {v['detail']}"


def _disagreements(document: dict, verdicts) -> list[str]:
    deviations = {(name, d["name"]): d["behaviour"] for name, meta in document["adapters"].items()
                  for d in meta.get("deviations", [])}
    by_case = collections.defaultdict(list)
    for v in verdicts:
        if v["status"] not in ("unavailable", "unsupported"):
            by_case[v["case"]].append(v)
    groups = collections.defaultdict(list)
    for case, vs in sorted(by_case.items()):
        if all(v["status"] == "pass" for v in vs):
            continue
        odd = tuple(sorted((_row_key(v), _behaviour(v, deviations)) for v in vs if v["status"] != "pass"))
        groups[odd].append((case, sum(v["status"] == "pass" for v in vs)))
    lines = ["## Where frameworks disagree", "",
             "Cases where at least one backend did not agree with the oracle, grouped by what the backends "
             "did. Backends not named agreed with the oracle (count in brackets).", ""]
    for odd, cases in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        names = ", ".join(f"`{c}`" for c, _ in cases[:6]) + (f" and {len(cases) - 6} more" if len(cases) > 6 else "")
        lines.append(f"- **{len(cases)} case(s)**: {names} (agreeing backends per case: {cases[0][1]})")
        about = document.get("cases", {}).get(cases[0][0])
        if about:
            lines.append(f"  - *what `{cases[0][0]}` pins down:* {about}")
        lines += [f"  - {row}: {what}" for row, what in odd]
    return lines + [""]


def _per_backend(document: dict, verdicts) -> list[str]:
    lines = ["## Per backend", ""]
    by_adapter = collections.defaultdict(list)
    for v in verdicts:
        by_adapter[v["adapter"]].append(v)
    for name in sorted(by_adapter):
        vs, meta = by_adapter[name], document["adapters"].get(name, {})
        lines += [f"### {name}", "", f"{_counts(vs)} — {meta.get('doc', '')}", ""]
        lines += _declared(meta, vs)
        lines += [f"- ✗ `{v['case']}` ({v['device']}): {v['detail']}" for v in vs if v["status"] == "fail"]
        lines += [f"- E `{v['case']}` ({v['device']}): {v['detail']}" for v in vs if v["status"] == "error"]
        reasons = collections.Counter(v["detail"] for v in vs if v["status"] in ("unsupported", "unavailable"))
        lines += [f"- U/– {count} cell(s): {reason}" for reason, count in reasons.most_common()]
        lines.append("")
    return lines


def _declared(meta: dict, vs) -> list[str]:
    seen = collections.Counter(v.get("deviation") for v in vs if v["status"] == "deviation")
    lines = []
    for d in meta.get("deviations", []):
        lines.append(f"- D **{d['name']}** ({seen[d['name']]} cell(s); {d['applies_to']}): {d['behaviour']}. "
                     f"{d['explanation']} [{d['link']}]({d['link']})")
    return lines


def render(document: dict) -> str:
    """The whole markdown report."""
    verdicts = document["verdicts"]
    parts = _header(document)[:2] + _intro(document) + _header(document)[2:] + _matrix(verdicts) + _disagreements(document, verdicts) + _per_backend(document, verdicts)
    return "\n".join(parts).rstrip() + "\n"
