"""reports/heatmap.svg: backends x families, hand-written SVG (no plotting dependency).

Each cell is one outlined ``<rect class="cell">`` holding a stacked bar: one segment per verdict
category (pass, each deviation kind, unsupported, fail, error, unavailable) whose width is that
category's share of the cell's verdicts, so the dominant outcome is the widest colour. Hovering a
cell shows its counts (``<title>``). GitHub renders the file when the markdown embeds it. Each row's label ends with the backend's
behaviours judged / behaviours in the suite (bnconform.reporting.coverage).
"""

from __future__ import annotations

from xml.sax.saxutils import escape

from ..coverage import coverage
from .common import CATEGORIES, counts, families, matrix_rows

COLOURS = {"pass": "#4caf50", "defect": "#d62728", "precision": "#ff7f0e", "dtype": "#9467bd", "edge": "#f2c500",
           "unsupported": "#c8c8c8", "fail": "#111111", "error": "#8c564b", "unavailable": "#f4f4f4"}
CELL_W, CELL_H, GAP, LABEL_W, HEADER_H, FONT = 92, 18, 3, 310, 26, 12


def render_heatmap(document: dict) -> str:
    """The SVG text: a header row of family names, one row per matrix row, then the legend."""
    cols, rows = families(document), matrix_rows(document)
    width = LABEL_W + len(cols) * (CELL_W + GAP) + 10
    legend_y = HEADER_H + len(rows) * (CELL_H + GAP) + 12
    height = legend_y + 2 * (CELL_H + GAP) + 6
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
              f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" font-size="{FONT}">'),
             f'<rect class="background" width="{width}" height="{height}" fill="#ffffff"/>']
    for j, family in enumerate(cols):
        x = LABEL_W + j * (CELL_W + GAP) + CELL_W / 2
        parts.append(f'<text x="{x:g}" y="{HEADER_H - 8}" text-anchor="middle" font-weight="bold">{escape(family)}</text>')
    judged = coverage(document)
    for i, (label, verdicts) in enumerate(rows.items()):
        y = HEADER_H + i * (CELL_H + GAP)
        figure = judged.get(verdicts[0]["adapter"]) if verdicts else None
        shown = f"{label} · {figure['judged']}/{figure['behaviours']}" if figure else label
        parts.append(f'<text x="{LABEL_W - 8}" y="{y + CELL_H - 5}" text-anchor="end">{escape(shown)}</text>')
        for j, family in enumerate(cols):
            cell = [v for v in verdicts if v["family"] == family]
            parts += _cell(LABEL_W + j * (CELL_W + GAP), y, label, family, cell)
    parts += _legend(legend_y, width)
    return "\n".join(parts + ["</svg>"]) + "\n"


def _cell(x: float, y: float, label: str, family: str, verdicts) -> list[str]:
    """The stacked segments, then the outlined cell rect on top (it carries the tooltip)."""
    c, total = counts(verdicts), len(verdicts)
    parts, offset = [], 0.0
    for category in CATEGORIES:
        if total and c[category]:
            w = CELL_W * c[category] / total
            parts.append(f'<rect class="segment" x="{x + offset:.2f}" y="{y}" width="{w:.2f}" height="{CELL_H}" '
                         f'fill="{COLOURS[category]}"/>')
            offset += w
    tip = f"{label} · {family}: " + (", ".join(f"{c[k]} {k}" for k in CATEGORIES if c[k]) or "no cases")
    parts.append(f'<rect class="cell" x="{x}" y="{y}" width="{CELL_W}" height="{CELL_H}" fill="none" '
                 f'stroke="#666666" stroke-width="0.5"><title>{escape(tip)}</title></rect>')
    return parts


def _legend(y: float, width: float) -> list[str]:
    parts, x = [], 10.0
    for category in CATEGORIES:
        name = {"defect": "deviation: defect", "precision": "deviation: precision", "dtype": "deviation: dtype",
                "edge": "deviation: edge"}.get(category, category)
        if x + 14 + 6.2 * len(name) > width:
            x, y = 10.0, y + CELL_H + GAP
        parts.append(f'<rect class="key" x="{x:g}" y="{y}" width="12" height="12" fill="{COLOURS[category]}" '
                     f'stroke="#666666" stroke-width="0.5"/>')
        parts.append(f'<text x="{x + 16:g}" y="{y + 10}">{escape(name)}</text>')
        x += 16 + 6.2 * len(name) + 12
    return parts
