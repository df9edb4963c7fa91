"""``bnconform bench``: median milliseconds per case per backend and device (framework import
excluded: the clock runs around ``adapter.run`` only), plus optionally the wall time of the full
matrix under ``pytest -n auto``. Figures, not assertions: these machines are noisy.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

from .adapters.registry import known
from .matrix import discover_cases, plan
from .runner import Progress, run_cells


def _table(verdicts, infos) -> list[str]:
    rows = {}
    for v in verdicts:
        if v.status in ("pass", "fail", "deviation"):
            rows.setdefault((v.adapter, v.device), []).append(v.seconds * 1000)
    lines = [f"{'backend':28} {'device':8} {'cases':>5} {'median ms':>10} {'p90 ms':>8} {'import s':>9}"]
    for (name, device), times in sorted(rows.items()):
        times.sort()
        p90 = times[int(0.9 * (len(times) - 1))]
        lines.append(f"{name:28} {device:8} {len(times):5d} {statistics.median(times):10.2f} {p90:8.2f} "
                     f"{infos.get(name, {}).get('import_seconds', float('nan')):9.1f}")
    return lines


def bench(args) -> int:
    cases = discover_cases(Path("cases"), args.family)
    names = args.backend or list(known())
    start = time.perf_counter()
    cells = plan(cases, names)
    verdicts, infos = run_cells(cells, jobs=1, progress=Progress(len(cells)))
    print("\n".join(_table(verdicts, infos)))
    print(f"sequential run of {len(cells)} cells: {time.perf_counter() - start:.1f} s wall (one backend at a time)")
    if args.matrix:
        command = [sys.executable, "-m", "pytest", "-n", "auto", "-q", "-p", "no:cacheprovider",
                   "--bn-matrix", "yes", "--bn-reports", "/tmp/bnconform-bench-reports"]
        command += [f"--bn-backend={n}" for n in names]
        start = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        print(f"full matrix under `pytest -n auto` ({len(cells)} cells + unit tests): {time.perf_counter() - start:.1f} s wall")
    return 0
