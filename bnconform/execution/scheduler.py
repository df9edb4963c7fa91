"""Running a planned matrix outside pytest (``bnconform run`` / ``check`` / ``bench``), with progress.

Cells the controller can decide alone (plan.presettle: unavailable, unsupported) never leave
it. The rest are grouped by host key (plan.host_key); up to ``jobs`` hosts run at once, each a
process importing its frameworks once. The first Ctrl-C stops scheduling, kills every host
process and raises KeyboardInterrupt out of :func:`run_cells` (nothing partial is returned).
"""

from __future__ import annotations

import collections
import queue
import sys
import threading
import time

from ..caseformat.validation import CaseError
from ..judging.verdict import Verdict
from . import controller
from .case_cache import load_case
from .plan import host_key, presettle


class Progress:
    """A one-line progress bar on stderr; when stderr is not a terminal, one plain line every
    ``interval`` seconds (and at the end), so logs stay short."""

    def __init__(self, total: int, stream=None, interval: float = 5.0):
        # stream=None: the sys.stderr of the moment (a default of sys.stderr would bind the one at import)
        stream = sys.stderr if stream is None else stream
        self.total, self.done, self.stream, self.interval = total, 0, stream, interval
        self.counts = collections.Counter()
        self.lock = threading.Lock()
        self.start = time.perf_counter()
        self.tty = stream.isatty()
        self.next_report = 0.0 if self.tty else interval

    def advance(self, verdict: Verdict) -> None:
        with self.lock:
            self.done += 1
            self.counts[verdict.status] += 1
            now = time.perf_counter() - self.start
            if now >= self.next_report or self.done == self.total:
                self.next_report = now + (0.1 if self.tty else self.interval)  # a bar redraws often, a log rarely
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

    def interrupted(self) -> None:
        if self.tty:
            self.stream.write("\n")  # leave the bar's line before the caller's last word
            self.stream.flush()


def _presettle_all(cells, progress: Progress) -> tuple[dict, list]:
    """(verdicts of the presettled cells by index, the cells that need a host, by index)."""
    settled, remaining, cases = {}, [], {}
    for index, cell in enumerate(cells):
        try:
            if cell.case_path not in cases:
                cases[cell.case_path] = load_case(cell.case_path)
            verdict = presettle(cell, cases[cell.case_path])
        except CaseError:
            verdict = None  # the host reports the invalid case as the cell's error
        if verdict is None:
            remaining.append((index, cell))
        else:
            settled[index] = verdict
            progress.advance(verdict)
    return settled, remaining


def _serve_group(names, indexed_cells, timeout, progress, stop, out) -> None:
    """Run one host's cells in order; stops early when ``stop`` is set (Ctrl-C)."""
    host = controller.HostProcess(names, timeout)
    try:
        for name in names:
            if stop.is_set():
                return
            out["infos"][name] = host.info(name)
        for index, cell in indexed_cells:
            if stop.is_set():
                return
            verdict = host.verdict(cell)
            if stop.is_set():
                return  # the host was killed under this cell by Ctrl-C: not a verdict
            out["verdicts"][index] = verdict
            progress.advance(verdict)
    finally:
        host.close()


def _worker(groups: queue.Queue, timeout, progress, stop, out) -> None:
    while not stop.is_set():
        try:
            names, indexed_cells = groups.get_nowait()
        except queue.Empty:
            return
        try:
            _serve_group(names, indexed_cells, timeout, progress, stop, out)
        except BaseException as exc:  # a bug here must not hang the run: report it to the caller
            out["crash"] = exc
            stop.set()


def _groups(remaining) -> list:
    """[(adapter names, [(index, cell)...])] per host key, biggest first so they start early."""
    by_key = collections.defaultdict(list)
    for index, cell in remaining:
        by_key[host_key(cell.adapter)].append((index, cell))
    groups = [(list(dict.fromkeys(c.adapter for _, c in items)), items) for items in by_key.values()]
    return sorted(groups, key=lambda g: -len(g[1]))


def run_cells(cells, jobs: int = 2, timeout: float = controller.CELL_TIMEOUT, progress: Progress | None = None):
    """Judge every cell; returns (verdicts in cell order, host info per adapter name).

    Raises KeyboardInterrupt after killing every host process if interrupted."""
    progress = progress or Progress(len(cells))
    controller.accept_new_hosts()
    settled, remaining = _presettle_all(cells, progress)
    groups: queue.Queue = queue.Queue()
    for group in _groups(remaining):
        groups.put(group)
    stop, out = threading.Event(), {"verdicts": dict(settled), "infos": {}}
    threads = [threading.Thread(target=_worker, args=(groups, timeout, progress, stop, out), daemon=True)
               for _ in range(max(1, min(jobs, groups.qsize())))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.1)  # short waits keep the main thread responsive to SIGINT
    except KeyboardInterrupt:
        stop.set()
        controller.kill_all()
        progress.interrupted()
        raise
    if "crash" in out:
        raise out["crash"]
    return [out["verdicts"][i] for i in range(len(cells))], out["infos"]
