"""``bnconform bench``: median milliseconds per case per backend and device (framework import
excluded: the clock runs around ``adapter.run`` only), plus the cost of gradients: the median of
the gradient cases against the forward-only cases, and against the same gradient cases run without
their dy (written with their own ids to a temporary folder and run in a second pass: same
shapes and knobs, and a declaration that names a case still selects its copy).

``--matrix`` also measures, in one run, what bounds the whole matrix under ``pytest -n auto``:

* the import floor: each backend's cold import (a fresh host process serving only it, timed
  from start to its first answer, one backend at a time) summed, divided by the worker count --
  the wall time a perfect schedule would need if every backend paid its own import;
* the matrix wall time of ``pytest -n auto cases``, and of the whole ``pytest -n auto`` (unit
  tests plus the matrix, what CI runs), each with its ratio to that floor;
* the five backends with the largest import + cell time, and every adapter's ``speed_note``.

Figures, not assertions: these machines are noisy.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..execution.adapter_classes import adapter_class, registered
from ..execution.controller import HostProcess
from ..execution.plan import missing_requirement, plan
from ..execution.scheduler import Progress, run_cells
from .usage import case_root, matrix_cases, selected_backends


def _ran(verdicts, kind_of) -> dict:
    """(adapter, device) -> [(ms, kind)] over the cells that ran."""
    rows = {}
    for v in verdicts:
        if v.status in ("pass", "fail", "deviation"):
            rows.setdefault((v.adapter, v.device), []).append((v.seconds * 1000, kind_of(v.case)))
    return rows


def _table(verdicts, infos, gradient_cases=frozenset(), twin_verdicts=()) -> list[str]:
    """One row per backend and device: cases ran, median and p90 ms, import seconds; the median ms
    of the forward-only cases, of the gradient cases (``gradient_cases``: ids), grad/fwd, and the
    gradient cases' median over the same cases run without dy (``twin_verdicts``) with that ratio."""
    rows = _ran(verdicts, lambda case: "grad" if case in gradient_cases else "fwd")
    for key, timed in _ran(twin_verdicts, lambda case: "twin").items():
        rows.setdefault(key, []).extend(timed)
    lines = [f"{'backend':28} {'device':8} {'cases':>5} {'median ms':>10} {'p90 ms':>8} {'import s':>9} "
             f"{'fwd ms':>7} {'grad ms':>8} {'grad/fwd':>8} {'same w/o dy':>11} {'grad/same':>9}"]
    for (name, device), timed in sorted(rows.items()):
        times = sorted(t for t, k in timed if k != "twin")
        if not times:
            continue
        p90 = times[int(0.9 * (len(times) - 1))]
        forward, backward, same = (_median([t for t, k in timed if k == kind]) for kind in ("fwd", "grad", "twin"))
        lines.append(f"{name:28} {device:8} {len(times):5d} {statistics.median(times):10.2f} {p90:8.2f} "
                     f"{infos.get(name, {}).get('import_seconds', float('nan')):9.1f} {forward:7.2f} {backward:8.2f} "
                     f"{_ratio(backward, forward):8.2f} {same:11.2f} {_ratio(backward, same):9.2f}")
    return lines


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def forward_twins(cases, root: Path) -> list:
    """Copies of the cases with gradients, dy and the gradient outputs stripped, written under
    ``root`` with their own ids (the host loads cases from files; a declaration that names a case
    still selects its twin) and loaded back."""
    from dataclasses import replace

    from ..caseformat.casefile import dumps_case
    from ..caseformat.model import GRADIENT_KEYS
    from ..caseformat.validation import load_case

    twins = []
    for case in (c for c in cases if c.gradient_modes):
        steps = [replace(s, dy=None, expected={k: v for k, v in s.expected.items() if k not in GRADIENT_KEYS},
                         tolerance={k: v for k, v in s.tolerance.items() if k not in GRADIENT_KEYS})
                 for s in case.steps]
        path = root / f"{case.id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dumps_case(replace(case, steps=steps)))
        twins.append(load_case(path))
    return twins


def _median(values) -> float:
    return statistics.median(values) if values else float("nan")


def cold_import_seconds(name: str) -> float:
    """Wall seconds from starting a host process that serves only ``name`` to its first answer."""
    host = HostProcess([name])
    start = time.perf_counter()
    try:
        host.info(name)
        return time.perf_counter() - start
    finally:
        host.close()


def _matrix_wall(names, all_selected: bool, paths=("cases",)) -> tuple[float, list, str]:
    """(wall seconds of `pytest -n auto PATHS`, its verdicts, its last output line); no paths = the
    whole suite as pytest's testpaths define it."""
    from ..reporting import results

    reports = Path(tempfile.mkdtemp(prefix="bnconform-bench-"))
    command = [sys.executable, "-m", "pytest", "-n", "auto", "-q", "-p", "no:cacheprovider", *paths,
               f"--bn-reports={reports}"] + ([] if all_selected else [f"--bn-backend={n}" for n in names])
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    written = re.search(r"bnconform: reports written to (.+)", done.stdout)
    verdicts = results.verdicts_of(results.read(Path(written.group(1)) / "results.json")) if written else []
    lines = done.stdout.strip().splitlines() or ["(no output)"]
    failed = [line for line in lines if line.startswith(("FAILED ", "ERROR "))]
    tail = lines[-1] + "".join(f"\n    {line}" for line in failed[:10]) + (f"\n    ... {len(failed) - 10} more"
                                                                           if len(failed) > 10 else "")
    return wall, verdicts, tail


def matrix_report(names, workers: int) -> list[str]:
    """The floor, the wall time, their ratio, the slowest backends and the adapters' speed notes."""
    runnable = [n for n in names if adapter_class(n) is not None and not missing_requirement(n)]
    imports = {}
    for name in runnable:
        imports[name] = cold_import_seconds(name)
        print(f"  cold import {name:28} {imports[name]:6.1f} s", file=sys.stderr)
    floor = sum(imports.values()) / workers
    wall, verdicts, tail = _matrix_wall(names, list(names) == list(registered()))
    cells = {}
    for v in verdicts:
        cells[v.adapter] = cells.get(v.adapter, 0.0) + v.seconds
    suite_wall, _, suite_tail = _matrix_wall(names, list(names) == list(registered()), paths=())
    ratio = (lambda seconds: f"{seconds / floor:.2f}" if floor else "nan")
    lines = [f"import floor: {sum(imports.values()):.1f} s of cold imports over {len(imports)} backends / "
             f"{workers} workers = {floor:.1f} s",
             f"matrix wall time (pytest -n auto cases): {wall:.1f} s  ({tail})",
             f"ratio matrix wall / floor: {ratio(wall)}",
             f"whole suite wall time (pytest -n auto: unit tests + matrix): {suite_wall:.1f} s  ({suite_tail})",
             f"ratio suite wall / floor: {ratio(suite_wall)}",
             "top 5 backends by import + cell seconds:"]
    totals = {n: imports.get(n, 0.0) + cells.get(adapter_class(n).name if adapter_class(n) else n, 0.0) for n in names}
    for name, total in sorted(totals.items(), key=lambda kv: -kv[1])[:5]:
        lines.append(f"  {name:28} {total:7.1f} s  (import {imports.get(name, 0.0):.1f} s)")
    notes = [(n, getattr(adapter_class(n), "speed_note", "")) for n in names if adapter_class(n) is not None]
    lines += [f"speed note {n}: {note}" for n, note in notes if note]
    return lines


def bench(args) -> int:
    cases, _ = matrix_cases(case_root(None), args.family)
    names, _ = selected_backends(args)  # families and globs, as in `run`
    if args.matrix:
        print("\n".join(matrix_report(names, os.cpu_count() or 1)))
        return 0
    start = time.perf_counter()
    cells = plan(cases, names, ["cpu"])
    verdicts, infos = run_cells(cells, jobs=1, progress=Progress(len(cells)))
    # The gradient cases again without dy, in a run of their own (same ids), so grad/same compares
    # the same shapes and knobs: the other families reuse a few shapes that stay compiled.
    twins = forward_twins(cases, Path(tempfile.mkdtemp(prefix="bnconform-bench-")))
    twin_verdicts, _ = run_cells(plan(twins, names, ["cpu"]), jobs=1, progress=Progress(len(twins) * len(names)))
    print("\n".join(_table(verdicts, infos, frozenset(c.id for c in cases if c.gradient_modes), twin_verdicts)))
    print(f"sequential runs of {len(cells)} cells and {len(twins)} cases without dy: "
          f"{time.perf_counter() - start:.1f} s wall (one host at a time)")
    return 0
