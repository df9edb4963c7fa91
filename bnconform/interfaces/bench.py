"""``bnconform bench``: median milliseconds per case per backend and device (framework import
excluded: the clock runs around ``adapter.run`` only), plus the cost of gradients: the median of
the gradient cases against the forward-only cases, and against the same gradient cases run without
their dy (written with their own ids to a temporary folder and run in a second pass: same
shapes and knobs, and a declaration that names a case still selects its copy).

``--matrix`` also measures, in one run, what bounds the whole matrix under ``pytest -n auto``:

* the import floor: each host environment's cold import, summed, divided by the worker count --
  the wall time a perfect schedule could not beat. Backends share host processes by host key
  (bnconform.execution.plan.host_key: TensorFlow, tf_keras and Keras on TensorFlow in one, the JAX
  family in another, ...), so each environment is imported once: one fresh host process serving
  the environment's selected backends, timed from its start to its answer about the last of them
  (python, bnconform, the frameworks, each adapter instantiated and asked for its info -- what a
  host pays before its first cell), one environment at a time;
* the matrix wall time of ``pytest -n auto cases``, and of the whole ``pytest -n auto`` (unit
  tests plus the matrix, what CI runs), each with its ratio to that floor;
* the framework floor: the cold imports plus every run cell's seconds inside ``adapter.run``
  (what the frameworks themselves spend tracing, compiling and computing), per worker -- the wall
  time no cut in bnconform's own overhead (pytest, host round trips, case reading, judging) can
  beat -- split by execution mode;
* the five host environments with the largest import + cell time (an xdist worker runs each
  environment's cells, so that sum is one worker's share), and every adapter's ``speed_note``.

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
from ..execution.plan import host_key, missing_requirement, plan
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


def cold_import_seconds(names) -> float:
    """Wall seconds from starting one host process serving ``names`` (the backends of one host
    key) to its answer about the last of them: each adapter loaded and asked for its info, as a
    host does before its first cell."""
    host = HostProcess(list(names))
    start = time.perf_counter()
    try:
        for name in names:
            host.info(name)
        return time.perf_counter() - start
    finally:
        host.close()


def host_groups(names) -> dict[str, list[str]]:
    """The runnable backends among ``names`` (their class loads, nothing they require is missing)
    grouped by host key, keys and backends in order of first appearance: one entry per host
    process a matrix run starts."""
    groups: dict[str, list[str]] = {}
    for name in names:
        if adapter_class(name) is not None and not missing_requirement(name):
            groups.setdefault(host_key(name), []).append(name)
    return groups


def environment_imports(groups: dict[str, list[str]]) -> dict[str, float]:
    """Host key -> cold import seconds (:func:`cold_import_seconds` of the key's backends): one
    measurement per host environment of ``groups`` (:func:`host_groups`), one at a time; progress on stderr."""
    imports = {}
    for key, names in groups.items():
        imports[key] = cold_import_seconds(names)
        print(f"  cold import {key} ({len(names)} backends): {imports[key]:.1f} s", file=sys.stderr)
    return imports


def floor_lines(imports: dict[str, float], groups: dict[str, list[str]], workers: int) -> tuple[float, list[str]]:
    """(the import floor: the environments' cold imports summed / ``workers``, the lines saying so:
    the sum, then each environment's import, largest first, with the backends it serves)."""
    floor = sum(imports.values()) / workers
    backends = sum(len(groups[key]) for key in imports)
    lines = [(f"import floor: {sum(imports.values()):.1f} s of cold imports over {len(imports)} host environments "
              f"({backends} backends) / {workers} workers = {floor:.1f} s")]
    for key, seconds in sorted(imports.items(), key=lambda kv: -kv[1]):
        names = groups[key]
        shown = ", ".join(names[:3]) + (f", +{len(names) - 3} more" if len(names) > 3 else "")
        lines.append(f"  {seconds:6.1f} s  {key}  ({shown})")
    return floor, lines


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


def framework_floor_lines(imports: dict[str, float], verdicts, floor: float, workers: int) -> list[str]:
    """What the frameworks alone cost: the environments' cold imports plus every run cell's
    seconds inside ``adapter.run`` (tracing, compiling, converting and computing; no pytest, host
    round trip, case reading or judging), divided by ``workers``: the wall time that no cut in
    bnconform's own overhead can go below, with its ratio to the import floor; the cell seconds
    are split by the rows' execution mode (eager, compiled, exported, ...)."""
    modes: dict[str, float] = {}
    for v in verdicts:
        if v.status not in ("unsupported", "unavailable"):
            mode = getattr(adapter_class(v.adapter), "execution_mode", "eager")
            modes[mode] = modes.get(mode, 0.0) + v.seconds
    cells = sum(modes.values())
    total = sum(imports.values()) + cells
    shares = ", ".join(f"{mode} {seconds:.1f} s" for mode, seconds in sorted(modes.items(), key=lambda kv: -kv[1]))
    return [f"framework floor: {sum(imports.values()):.1f} s of imports + {cells:.1f} s inside adapter.run "
            f"({shares}) = {total:.1f} s / {workers} workers = {total / workers:.1f} s = "
            f"{total / workers / floor if floor else float('nan'):.2f} x the import floor"]


def top_environments(imports: dict[str, float], groups: dict[str, list[str]], verdicts, count: int = 5) -> list[str]:
    """The ``count`` host environments with the largest import + cell seconds (the cells of the
    backends it serves, from ``verdicts``), largest first, one line each naming its costliest backend."""
    cells: dict[str, float] = {}
    for v in verdicts:
        cells[v.adapter] = cells.get(v.adapter, 0.0) + v.seconds
    spent = {n: cells.get(adapter_class(n).name or n, 0.0) for key in imports for n in groups[key]}
    total = {key: imports[key] + sum(spent[n] for n in groups[key]) for key in imports}
    lines = [f"top {count} host environments by import + cell seconds:"]
    for key in sorted(total, key=lambda k: -total[k])[:count]:
        costliest = max(groups[key], key=spent.get)
        lines.append(f"  {total[key]:7.1f} s  {key}  (import {imports[key]:.1f} s, cells {total[key] - imports[key]:.1f} s "
                     f"over {len(groups[key])} backends; most: {costliest} {spent[costliest]:.1f} s)")
    return lines


def matrix_report(names, workers: int) -> list[str]:
    """The floor with each environment's import, the two wall times and their ratios to the floor,
    the five costliest environments and the adapters' speed notes."""
    groups = host_groups(names)
    imports = environment_imports(groups)
    floor, lines = floor_lines(imports, groups, workers)
    everything = list(names) == list(registered())
    wall, verdicts, tail = _matrix_wall(names, everything)
    suite_wall, _, suite_tail = _matrix_wall(names, everything, paths=())
    ratio = (lambda seconds: f"{seconds / floor:.2f}" if floor else "nan")
    lines += [f"matrix wall time (pytest -n auto cases): {wall:.1f} s  ({tail})",
              f"ratio matrix wall / floor: {ratio(wall)}",
              f"whole suite wall time (pytest -n auto: unit tests + matrix): {suite_wall:.1f} s  ({suite_tail})",
              f"ratio suite wall / floor: {ratio(suite_wall)}"]
    lines += framework_floor_lines(imports, verdicts, floor, workers)
    lines += top_environments(imports, groups, verdicts)
    notes = [(n, getattr(adapter_class(n), "speed_note", "")) for n in names if adapter_class(n) is not None]
    return lines + [f"speed note {n}: {note}" for n, note in notes if note]


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
