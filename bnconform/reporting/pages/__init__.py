"""The reports a person reads, rendered from a results document (reports/results.json).

``render`` gives conformance.md (one page, at most 300 lines: summary, what did not run and its
fix, the porting table (:mod:`.porting`), profile, findings, matrix, capabilities),
``render_details`` conformance-details.md (everything per backend) and
:func:`.heatmap.render_heatmap` heatmap.svg, which the main page embeds. :mod:`.translation` holds
the porting facts that ``bnconform port`` words too. docs/report.md describes the pages.
"""

from __future__ import annotations

from pathlib import Path

from .details import render_details
from .heatmap import render_heatmap
from .main import MAX_LINES, render

__all__ = ["MAX_LINES", "render", "render_details", "write_pages"]


def write_pages(document: dict, out: Path) -> None:
    """conformance.md, conformance-details.md and heatmap.svg under ``out`` (results.json is the caller's)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "conformance.md").write_text(render(document), encoding="utf-8")
    (out / "conformance-details.md").write_text(render_details(document), encoding="utf-8")
    (out / "heatmap.svg").write_text(render_heatmap(document), encoding="utf-8")
