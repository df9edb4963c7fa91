"""Where a run's reports go, and writing them all-or-nothing.

Only a run over the whole registered matrix replaces the tracked ``reports/results.json`` and
``reports/conformance.md``; any other selection goes to ``reports/partial/<selection-slug>/``
(gitignored), or to ``--out DIR`` when given. So ``bnconform run --backend mybn`` can no longer
overwrite the full report with a small one and leave the checkout dirty.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .selection import selection_slug

DETAILS_NAME = "details.md"  # used only if bnconform.report grows render_details


def report_dir(document: dict, reports_dir, whole_matrix: bool, out=None) -> Path:
    """``out`` if given; ``reports_dir`` for a whole-matrix run; else ``reports_dir/partial/<slug>``."""
    if out is not None:
        return Path(out)
    if whole_matrix:
        return Path(reports_dir)
    return Path(reports_dir) / "partial" / selection_slug(_selection(document))


def _selection(document: dict) -> dict:
    """The run's options (from the document); the adapters it holds when none were recorded."""
    runs = document.get("runs") or [{}]
    selection = {k: v for k, v in (runs[-1].get("selection") or {}).items() if k != "via" and v}
    return selection or {"backend": sorted(document.get("adapters") or {v["adapter"] for v in document["verdicts"]})}


def _rendered(document: dict) -> dict[str, str]:
    """Every file's text, rendered before anything is written (a render error writes nothing)."""
    from . import report

    files = {"results.json": json.dumps(document, indent=1, allow_nan=False) + "\n",
             "conformance.md": report.render(document)}
    if hasattr(report, "render_details"):
        files[getattr(report, "DETAILS_NAME", DETAILS_NAME)] = report.render_details(document)
    return files


def write_reports(document: dict, reports_dir, whole_matrix: bool, out=None) -> Path:
    """Write results.json, conformance.md (and the details page, if the renderer has one) into
    the directory chosen by :func:`report_dir`; returns that directory. Each file is written to
    ``NAME.tmp`` first and renamed, so an interrupted write never leaves a half file behind."""
    target = report_dir(document, reports_dir, whole_matrix, out)
    files = _rendered(document)
    target.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        temporary = target / f"{name}.tmp"
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, target / name)
    return target
