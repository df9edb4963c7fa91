"""Run one adapter over cases inside this process: the developer loop and the benchmark core.

``python -m bnconform.execution.inprocess ADAPTER [--family F ...] [--device D] [--show-all]`` prints every
non-pass verdict, the verdict counts, and the median milliseconds per case (framework import
excluded). The adapter's ``environment`` is applied before its framework is imported, so run
one adapter per process.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time
from pathlib import Path

from ..adapters.registry import resolve
from ..judging.judge import judge
from ..judging.verdict import Verdict
from .plan import discover_cases


def load_cases(root: Path = Path("cases"), families=None) -> list:
    return discover_cases(root, families)


def run(name: str, cases, devices=None) -> tuple[list[Verdict], float]:
    """Judge every case on every usable device; returns verdicts and the import seconds."""
    cls = resolve(name)
    os.environ.update(cls.environment)
    adapter = cls()
    start = time.perf_counter()
    reason = adapter.unavailable_reason()
    if reason:
        raise SystemExit(f"{name}: unavailable: {reason}")
    usable = adapter.devices()
    import_seconds = time.perf_counter() - start
    verdicts = [judge(adapter, case, device) for device in (devices or usable) for case in cases]
    return verdicts, import_seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bnconform.execution.inprocess")
    parser.add_argument("adapter")
    parser.add_argument("--family", action="append")
    parser.add_argument("--device", action="append")
    parser.add_argument("--show-all", action="store_true")
    args = parser.parse_args(argv)
    verdicts, import_seconds = run(args.adapter, load_cases(families=args.family), args.device)
    for v in verdicts:
        if args.show_all or v.status != "pass":
            print(f"{v.status:11} {v.cell_id}: {v.detail}")
    timed = [v.seconds * 1000 for v in verdicts if v.status in ("pass", "fail", "deviation")]
    counts = collections.Counter(v.status for v in verdicts)
    print(f"{args.adapter}: {dict(counts)}; import+devices {import_seconds:.2f}s; "
          f"median {statistics.median(timed) if timed else float('nan'):.2f} ms/case over {len(timed)} runs")
    return 1 if counts["fail"] or counts["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
