"""Running a planned matrix outside pytest (``bnconform run`` / ``check``), with progress.

Cells are grouped by backend; up to ``jobs`` backends run at once, each in its own worker
process (bnconform.pool), so a crash or hang costs only that backend's cells.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from .verdict import Verdict
from .pool import AdapterProcess


class Progress:
    """A one-line progress bar on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.done, self.stream = total, 0, stream
        self.counts = collections.Counter()
        self.lock = threading.Lock()
        self.start = time.perf_counter()
        self.tty = stream.isatty()
        self.next_report = 0.0

    def advance(self, verdict: Verdict) -> None:
        with self.lock:
            self.done += 1
            self.counts[verdict.status] += 1
            now = time.perf_counter() - self.start
            if self.tty or now >= self.next_report or self.done == self.total:
                self.next_report = now + 10
                self._draw(verdict.adapter, now)

    def _draw(self, current: str, elapsed: float) -> None:
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        counts = " ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
        line = f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} cells {elapsed:5.0f}s  {counts}  ({current})"
        self.stream.write(("\r" + line[:150].ljust(150)) if self.tty else line + "\n")
        if self.tty and self.done == self.total:
            self.stream.write("\n")
        self.stream.flush()


def _run_backend(name: str, cells, timeout: float, progress: Progress) -> tuple[list[Verdict], dict]:
    process = AdapterProcess(name, timeout)
    try:
        info = process.info()
        verdicts = []
        for cell in cells:
            verdict = process.verdict(cell.case_path, cell.case_id, cell.family, cell.device)
            verdicts.append(verdict)
            progress.advance(verdict)
        return verdicts, info
    finally:
        process.close()


def run_cells(cells, jobs: int = 2, timeout: float = 120.0, progress: Progress | None = None):
    """Judge every cell; returns (verdicts in cell order, worker info per backend)."""
    progress = progress or Progress(len(cells))
    groups = collections.defaultdict(list)
    for cell in cells:
        groups[cell.adapter].append(cell)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as executor:
        futures = {name: executor.submit(_run_backend, name, group, timeout, progress) for name, group in groups.items()}
        outcomes = {name: future.result() for name, future in futures.items()}
    # Keyed by the selected name: an ad hoc "module:Class" adapter reports its own .name.
    by_cell = {(v.case, name, v.device): v for name, (vs, _) in outcomes.items() for v in vs}
    verdicts = [by_cell[(c.case_id, c.adapter, c.device)] for c in cells]
    return verdicts, {name: info for name, (_, info) in outcomes.items()}
