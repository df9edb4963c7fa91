"""Shared by the report pages and the heatmap: matrix rows, status categories and counts."""

from __future__ import annotations

import collections

from ...judging.verdict import DEVIATION_KINDS

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
    an adapter with no such device gets one row "adapter (unavailable)" so every backend shows."""
    by_row = collections.defaultdict(list)
    for v in document["verdicts"]:
        by_row[(v["adapter"], v["device"])].append(v)
    rows, shown = {}, set()
    for (adapter, device), vs in sorted(by_row.items()):
        if any(v["status"] != "unavailable" for v in vs):
            rows[f"{adapter} ({device})"] = vs
            shown.add(adapter)
    for (adapter, device), vs in sorted(by_row.items()):
        if adapter not in shown:
            rows[f"{adapter} (unavailable)"] = vs
            shown.add(adapter)
    return dict(sorted(rows.items()))


def unavailable_adapters(document: dict) -> list[str]:
    """Adapters none of whose cells could run here."""
    ran = {v["adapter"] for v in document["verdicts"] if v["status"] != "unavailable"}
    return sorted({v["adapter"] for v in document["verdicts"]} - ran)

