"""Where a run's reports go, and writing them all-or-nothing.

Only a run over the whole registered matrix replaces the tracked ``reports/results.json`` and
``reports/conformance.md``; any other selection goes to ``reports/partial/<selection-slug>/``
(gitignored), or to ``--out DIR`` when given. So ``bnconform run --backend mybn`` can no longer
overwrite the full report with a small one and leave the checkout dirty.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..execution.selection import selection_slug


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


def _stage(document: dict, staging: Path, with_results: bool = True) -> None:
    """Render every page into ``staging``: results.json, then the report package's pages
    (``write_pages``: conformance.md, conformance-details.md, heatmap.svg) or, from an older
    renderer, conformance.md alone."""
    from . import pages as report
    from . import results

    if with_results:
        results.write(document, staging / "results.json")
    if hasattr(report, "write_pages"):
        report.write_pages(document, staging)
    else:
        (staging / "conformance.md").write_text(report.render(document), encoding="utf-8")


def _publish(document: dict, target: Path, main_name: str = "conformance.md", with_results: bool = True) -> None:
    """Stage every file in ``target/.pages.tmp``, then rename each into ``target`` (the main page
    as ``main_name``), so a render error or an interrupt never leaves a half-written set."""
    target.mkdir(parents=True, exist_ok=True)
    staging = target / ".pages.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        _stage(document, staging, with_results)
        for page in sorted(staging.iterdir()):
            os.replace(page, target / (main_name if page.name == "conformance.md" else page.name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_reports(document: dict, reports_dir, whole_matrix: bool, out=None) -> Path:
    """Write results.json and the rendered pages into the directory chosen by :func:`report_dir`;
    returns that directory."""
    target = report_dir(document, reports_dir, whole_matrix, out)
    _publish(document, target)
    return target


def write_pages_as(document: dict, main_page) -> Path:
    """The rendered pages (no results.json) with the main page at ``main_page`` and its
    companions (details page, heatmap) beside it, where its relative links point."""
    main_page = Path(main_page)
    _publish(document, main_page.parent, main_page.name, with_results=False)
    return main_page
