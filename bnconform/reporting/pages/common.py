"""Shared by the report pages and the heatmap: matrix rows, status categories and counts."""

from __future__ import annotations

import collections

from ...judging.verdict import DEVIATION_KINDS
from ..profile import ran_here

# A cell's category: its status, or for a deviation its worst kind (kinds are sorted worst first).
CATEGORIES = ("pass", *DEVIATION_KINDS, "unsupported", "fail", "error", "unavailable")
SYMBOL = {"pass": "✓", "defect": "D", "precision": "P", "dtype": "T", "edge": "B", "unsupported": "U",
          "fail": "✗", "error": "E", "unavailable": "–"}
LEGEND = ("✓ pass (agrees with the float64 oracle) · deviation, declared and re-verified this run, by kind: "
          "**D** defect · **P** precision · **T** dtype · **B** edge (boundary: N = 1, N = 0, eps = 0) · "
          "U unsupported (the API cannot express the case) · ✗ fail · E error (both unexpected) · "
          "– unavailable (framework or device absent here)")


def category(v: dict) -> str:
    if v["status"] == "deviation":
        return (v.get("kinds") or ["defect"])[0]
    return v["status"]


def counts(verdicts) -> collections.Counter:
    return collections.Counter(category(v) for v in verdicts)


def count_text(verdicts) -> str:
    """E.g. ``12✓ 1D 3U``: counts per category, in CATEGORIES order; ``·`` when empty."""
    c = counts(verdicts)
    return " ".join(f"{c[k]}{SYMBOL[k]}" for k in CATEGORIES if c[k]) or "·"


def families(document: dict) -> list[str]:
    return sorted({v["family"] for v in document["verdicts"]})


def matrix_rows(document: dict) -> dict[str, list[dict]]:
    """"adapter (device)" -> its verdicts, for every device where some cell was not unavailable;
    an adapter that did not run here (:func:`..profile.ran_here`: no such device, or only
    unsupported cells beside the unavailable ones) gets one row "adapter (unavailable)" so every
    backend shows."""
    by_row, by_adapter = collections.defaultdict(list), collections.defaultdict(list)
    for v in document["verdicts"]:
        by_row[(v["adapter"], v["device"])].append(v)
        by_adapter[v["adapter"]].append(v)
    rows, shown = {}, set()
    for (adapter, device), vs in sorted(by_row.items()):
        if any(v["status"] != "unavailable" for v in vs) and ran_here(by_adapter[adapter]):
            rows[f"{adapter} ({device})"] = vs
            shown.add(adapter)
    for (adapter, device), vs in sorted(by_row.items()):
        if adapter not in shown:
            rows[f"{adapter} (unavailable)"] = vs
            shown.add(adapter)
    return dict(sorted(rows.items()))


def not_runnable(document: dict) -> dict[str, str]:
    """Backend -> why it could not run here, for every backend none of whose cells ran while some
    were unavailable (:func:`..profile.ran_here`): all cells unavailable (framework not installed),
    or the runnable ones unavailable and the rest unsupported (those are settled from the
    declaration before the framework is asked, e.g. tinygrad installed but no clang). The reason is
    the adapter's own (``unavailable`` in the metadata), else its cells' most common one."""
    by_adapter = collections.defaultdict(list)
    for v in document["verdicts"]:
        by_adapter[v["adapter"]].append(v)
    found = {}
    for name, verdicts in sorted(by_adapter.items()):
        if not ran_here(verdicts):
            details = collections.Counter(v["detail"] for v in verdicts if v["status"] == "unavailable")
            declared = (document.get("adapters", {}).get(name) or {}).get("unavailable")
            found[name] = declared or details.most_common(1)[0][0]
    return found


def why_and_fix(reason: str) -> tuple[str, str]:
    """Split an unavailable reason into (why, fix). Reasons name their fix as "...; install it with:
    [WHERE: ]CMD[ (NOTE)]" (a missing package, Node modules, an executable) or "...; install it
    (...)"; the command is shown as code. fix is "" when the reason names none, and then only the
    first clause is the why (the rest is explanation)."""
    head, marker, command = reason.partition("; install it with: ")
    if marker:
        where, colon, rest = command.partition(": ")
        where, command = (f"{where}: ", rest) if colon and " " in rest else ("", command)
        code, _, note = command.partition(" (")
        return head, f"{where}`{code}`" + (f" ({note}" if note else "")
    head, marker, rest = reason.partition("; install it ")
    if marker:
        return head, f"install it {rest}"
    return reason.split("; ")[0], ""

