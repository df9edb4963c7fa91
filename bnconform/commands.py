"""``bnconform run | check | list | report | diff | bench``: the commands beyond generate/validate."""

from __future__ import annotations

import collections
import os
import sys
from pathlib import Path

from .cli import UsageError, case_paths

UNEXPECTED = ("fail", "error")


def _selection(args):
    from .adapters.registry import RegistryError
    from .matrix import discover_cases, plan, select_adapters
    from .validation import CaseError

    try:
        cases = discover_cases(Path(args.cases), args.family)
        adapters = select_adapters(args.backend, args.adapter)
    except (CaseError, RegistryError) as exc:
        raise UsageError(str(exc)) from None
    if args.family and not cases:
        raise UsageError(f"--family: Expected: a family under {args.cases}. Received: {', '.join(args.family)}")
    return plan(cases, adapters, args.device), adapters


def _summary(verdicts) -> str:
    from .verdict import STATUSES

    rows = collections.defaultdict(collections.Counter)
    for v in verdicts:
        rows[f"{v.adapter} ({v.device})"][v.status] += 1
    width = max([len(r) for r in rows] + [7])
    lines = [f"{'backend':{width}} " + " ".join(f"{s:>11}" for s in STATUSES)]
    lines += [f"{row:{width}} " + " ".join(f"{c[s]:>11}" for s in STATUSES) for row, c in sorted(rows.items())]
    return "\n".join(lines)


def _write_reports(document, out: Path) -> None:
    from . import results
    from .report import render

    results.write(document, out / "results.json")
    (out / "conformance.md").write_text(render(document), encoding="utf-8")


def cmd_run(args) -> int:
    from . import results
    from .runner import run_cells

    cells, adapters = _selection(args)
    print(f"running {len(cells)} cells: {len({c.case_id for c in cells})} cases x {len(adapters)} backends", file=sys.stderr)
    verdicts, infos = run_cells(cells, jobs=args.jobs, timeout=args.timeout)
    selection = {k: getattr(args, k) for k in ("backend", "device", "family") if getattr(args, k)}
    document = results.build(verdicts, infos, selection, Path(args.cases))
    _write_reports(document, Path(args.reports))
    print(_summary(verdicts))
    bad = [v for v in verdicts if v.status in UNEXPECTED]
    for v in bad[:20]:
        print(f"{v.status}: {v.cell_id}: {v.detail}", file=sys.stderr)
    print(f"reports written to {args.reports}/conformance.md and results.json; {len(bad)} unexpected fail/error")
    return 1 if bad else 0


def cmd_check(args) -> int:
    from .adapters.registry import RegistryError
    from .matrix import plan, select_adapters
    from .runner import run_cells
    from .validation import CaseError, load_case

    try:
        cases = [load_case(p) for p in case_paths(args.paths)]
        adapters = select_adapters(args.backend, args.adapter, all_by_default=False)
        if not adapters:
            raise UsageError("check: Expected: --backend NAME or --adapter module:Class. Received: neither")
    except (CaseError, RegistryError) as exc:
        raise UsageError(str(exc)) from None
    verdicts, _ = run_cells(plan(cases, adapters, args.device), jobs=1, timeout=args.timeout)
    for v in verdicts:
        print(f"{v.status:11} {v.cell_id}" + (f": {v.detail}" if v.detail else ""))
    conform = all(v.status in ("pass", "deviation") for v in verdicts)
    return 0 if conform else 1


def cmd_list(args) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from .adapters.registry import known, resolve
    from .pool import AdapterProcess

    names = list(known())

    def describe(name):
        process = AdapterProcess(name)
        try:
            return process.info()
        finally:
            process.close()

    with ThreadPoolExecutor(max_workers=args.jobs) as executor:
        infos = dict(zip(names, executor.map(describe, names)))
    print(f"{'backend':28} {'framework':14} {'version':12} {'devices':16} status")
    for name in names:
        info, cls = infos[name], resolve(name)
        status = f"unavailable: {info['unavailable']}" if info.get("unavailable") else "available"
        print(f"{name:28} {cls.framework:14} {info.get('version', '?'):12} {','.join(info.get('devices') or []) or '-':16} {status}")
    return 0


def cmd_report(args) -> int:
    from . import results

    try:
        document = results.merge([results.read(Path(p)) for p in args.results])
    except results.ResultsError as exc:
        raise UsageError(str(exc)) from None
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    from .report import render

    out.write_text(render(document), encoding="utf-8")
    if args.merged:
        results.write(document, Path(args.merged))
    print(f"wrote {out} from {len(args.results)} result file(s), {len(document['verdicts'])} cells")
    return 0


def cmd_diff(args) -> int:
    from . import results

    try:
        old, new = results.read(Path(args.old)), results.read(Path(args.new))
    except results.ResultsError as exc:
        raise UsageError(str(exc)) from None
    lines = results.diff(old, new)
    print("\n".join(lines) if lines else "no cell changed its verdict")
    return 1 if lines else 0


def cmd_bench(args) -> int:
    from .bench import bench

    return bench(args)


def _common(parser, backends=True) -> None:
    if backends:
        parser.add_argument("--backend", action="append", help="backend name (repeatable; default: all)")
    parser.add_argument("--adapter", action="append", default=[], help="ad hoc adapter package.module:ClassName")
    parser.add_argument("--device", action="append", help="device kind, e.g. cpu or cuda (repeatable)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per cell before a backend is killed")


def register(sub) -> None:
    run = sub.add_parser("run", help="run the conformance matrix and write the reports (the main job)")
    _common(run)
    run.add_argument("--family", action="append", help="case family (repeatable; default: all)")
    run.add_argument("--cases", default="cases", help="case directory (default: cases)")
    run.add_argument("--reports", default="reports", help="report directory (default: reports)")
    run.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="backends run at once")
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check", help="run custom case files (exit 0 conform, 1 not, 2 invalid)")
    check.add_argument("paths", nargs="+", help="case files or directories")
    _common(check)
    check.set_defaults(func=cmd_check)
    lst = sub.add_parser("list", help="every backend, its framework version, devices and availability")
    lst.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    lst.set_defaults(func=cmd_list)
    rep = sub.add_parser("report", help="re-render (and merge) results.json files into markdown")
    rep.add_argument("results", nargs="+", help="results.json files (later ones win per cell)")
    rep.add_argument("--output", "-o", default="reports/conformance.md")
    rep.add_argument("--merged", help="also write the merged results.json here")
    rep.set_defaults(func=cmd_report)
    dif = sub.add_parser("diff", help="cells whose verdict or error changed between two results.json")
    dif.add_argument("old")
    dif.add_argument("new")
    dif.set_defaults(func=cmd_diff)
    ben = sub.add_parser("bench", help="median ms per case per backend, and the full-matrix wall time")
    ben.add_argument("--backend", action="append", help="backend name (repeatable; default: all available)")
    ben.add_argument("--family", action="append")
    ben.add_argument("--matrix", action="store_true", help="also time `pytest -n auto` over the matrix")
    ben.set_defaults(func=cmd_bench)
