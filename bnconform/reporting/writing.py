"""Where a run's reports go, and writing them all-or-nothing.

Only a run over the whole registered matrix replaces the tracked ``reports/results.json`` and
``reports/conformance.md``; any other selection goes to ``reports/partial/<selection-slug>/``
(gitignored), or to ``--out DIR`` when given. So ``bnconform run --backend mybn`` can no longer
overwrite the full report with a small one and leave the checkout dirty.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from pathlib import Path

from ..execution.selection import selection_slug
from .report_lock import LOCK_NAME, PUBLISH_WAIT_SECONDS, ReportsBusy, reserved


def report_dir(document: dict, reports_dir, whole_matrix: bool, out=None) -> Path:
    """``out`` if given; ``reports_dir`` for a whole-matrix run; else ``reports_dir/partial/<slug>``
    of the run's options (from the document; the adapters it holds when none were recorded)."""
    runs = document.get("runs") or [{}]
    adapters = sorted(document.get("adapters") or {v["adapter"] for v in document["verdicts"]})
    return target_dir(runs[-1].get("selection") or {}, adapters, reports_dir, whole_matrix, out)


def target_dir(selection: dict, adapters, reports_dir, whole_matrix: bool, out=None) -> Path:
    """Where a run's reports go, known before it runs: ``out``, ``reports_dir`` for the whole
    matrix, else ``reports_dir/partial/<slug of its options (or its adapters)>``."""
    if out is not None:
        return Path(out)
    if whole_matrix:
        return Path(reports_dir)
    chosen = {k: v for k, v in selection.items() if k != "via" and v}
    return Path(reports_dir) / "partial" / selection_slug(chosen or {"backend": sorted(adapters)})


def _stage(document: dict, staging: Path, with_results: bool = True) -> None:
    """Render every page into ``staging``: results.json, then conformance.md,
    conformance-details.md and heatmap.svg (:func:`.pages.write_pages`)."""
    from . import pages, results

    if with_results:
        results.write(document, staging / "results.json")
    pages.write_pages(document, staging)


def _publish(document: dict, target: Path, main_name: str = "conformance.md", with_results: bool = True) -> None:
    """Stage every file in ``target/.pages.tmp``, then rename each into ``target`` (the main page
    as ``main_name``), holding the directory's lock (report_lock), so a render error, a full disk
    or an interrupt never leaves a half-written or interleaved set: ReportsNotWritten (one line)
    when the directory cannot be written, the files already there unchanged."""
    existed = target.is_dir()
    try:
        with reserved(target, wait=PUBLISH_WAIT_SECONDS):
            staging = target / ".pages.tmp"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            try:
                _stage(document, staging, with_results)
                with _signals_held():  # the renames finish together, or not at all
                    for page in sorted(staging.iterdir()):
                        os.replace(page, target / (main_name if page.name == "conformance.md" else page.name))
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except ReportsBusy as exc:
        raise ReportsNotWritten(str(exc)) from None
    except OSError as exc:
        raise ReportsNotWritten(f"{target}: Expected: a directory the reports can be written to. Received: "
                                f"{exc.strerror or exc} ({exc.filename or target}); the reports there are unchanged"
                                ) from None
    finally:
        if not existed:
            _remove_if_unused(target)


class ReportsNotWritten(Exception):
    """The reports could not be written where they go; the message is one line."""


@contextlib.contextmanager
def _signals_held():
    """SIGINT and SIGTERM wait until the block is done (main thread, POSIX), then act."""
    held = {signal.SIGINT, signal.SIGTERM}
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)


def _remove_if_unused(target: Path) -> None:
    """Remove a directory this writer created if it holds nothing but the lock file."""
    if target.is_dir() and {p.name for p in target.iterdir()} <= {LOCK_NAME}:
        shutil.rmtree(target, ignore_errors=True)


def write_reports(document: dict, reports_dir, whole_matrix: bool, out=None) -> Path:
    """Write results.json and the rendered pages into the directory chosen by :func:`report_dir`;
    returns that directory."""
    return write_reports_to(document, report_dir(document, reports_dir, whole_matrix, out))


def write_reports_to(document: dict, target) -> Path:
    """results.json and the rendered pages into ``target``, all-or-nothing; returns it."""
    _publish(document, Path(target))
    return Path(target)


def write_pages_as(document: dict, main_page) -> Path:
    """The rendered pages (no results.json) with the main page at ``main_page`` and its
    companions (details page, heatmap) beside it, where its relative links point."""
    main_page = Path(main_page)
    _publish(document, main_page.parent, main_page.name, with_results=False)
    return main_page
