"""``bnconform run | check | list | report | diff | bench``: the commands beyond generate/validate.

Every bad input becomes a :class:`UsageError` (one line, exit 2). Which backends and devices a
run means is decided by :mod:`bnconform.execution.selection`; where its reports go, by
:mod:`bnconform.reporting.writing` (only a whole-matrix run replaces the tracked ``reports/``).
"""

from __future__ import annotations

import collections
import io
import os
import sys
from pathlib import Path

from .usage import (UsageError, case_paths, case_root, is_default_case_root, matrix_cases, positive_float, positive_int,
                    selected_backends)

UNEXPECTED = ("fail", "error")
NOT_RUN = ("unsupported", "unavailable")


def _run_cells(cells, jobs: int, timeout: float, quiet: bool = False):
    """(verdicts in cell order, host info per backend); ``quiet`` drops the progress bar (check
    prints every cell itself)."""
    from ..execution.scheduler import Progress, run_cells

    progress = Progress(len(cells), stream=io.StringIO()) if quiet else None
    return run_cells(cells, jobs=jobs, timeout=timeout, progress=progress)


def _summary(verdicts) -> str:
    from ..judging.verdict import STATUSES

    rows = collections.defaultdict(collections.Counter)
    for v in verdicts:
        rows[f"{v.adapter} ({v.device})"][v.status] += 1
    width = max([len(r) for r in rows] + [7])
    lines = [f"{'backend':{width}} " + " ".join(f"{s:>11}" for s in STATUSES)]
    lines += [f"{row:{width}} " + " ".join(f"{c[s]:>11}" for s in STATUSES) for row, c in sorted(rows.items())]
    return "\n".join(lines)


def cmd_run(args) -> int:
    from ..execution.plan import plan
    from ..execution.selection import is_whole_matrix
    from ..reporting.report_lock import ReportsBusy, reserved
    from ..reporting.writing import target_dir

    args.cases = case_root(args.cases)
    cases, families = matrix_cases(args.cases, args.family)
    selected, devices = selected_backends(args)
    selection = {k: getattr(args, k) for k in ("backend", "adapter", "device", "family", "stepwise") if getattr(args, k)}
    whole = (is_whole_matrix(selected, args.family, args.device, families) and is_default_case_root(args.cases)
             and not args.stepwise)
    if args.versions:
        from .sweep import sweep

        return sweep(args, cases, selected, devices, _run_and_report)
    target = target_dir(selection, selected, Path(args.reports), whole, args.out)
    cells = plan(cases, selected, devices, args.stepwise)
    try:
        with reserved(target, create=False):  # a second run for these reports is refused now, not later
            print(f"running {len(cells)} cells: {len(cases)} cases x {len(selected)} backends on "
                  f"{', '.join(devices)}", file=sys.stderr)
            return _run_and_report(args, cells, selection, target)
    except ReportsBusy as exc:
        raise UsageError(str(exc)) from None


def _run_and_report(args, cells, selection: dict, target: Path) -> int:
    """Run the cells, write the reports into ``target`` and print the summary; exit 1 on an
    unexpected fail or error, UsageError (exit 2) when the reports cannot be written."""
    from ..reporting import results
    from ..reporting.writing import ReportsNotWritten, write_reports_to

    case_meta = results.CaseMetaInAdvance(Path(args.cases), sorted({cell.case_path for cell in cells}))
    verdicts, infos = _run_cells(cells, args.jobs, args.timeout)
    document = results.build(verdicts, infos, selection, Path(args.cases), case_meta)
    print(_summary(verdicts))
    for line in _not_run_here(verdicts):
        print(line)
    try:
        write_reports_to(document, target)
    except ReportsNotWritten as exc:
        raise UsageError(f"reports not written: {exc}") from None
    bad = [v for v in verdicts if v.status in UNEXPECTED]
    for v in bad[:20]:
        print(f"{v.status}: {v.cell_id}: {v.detail}", file=sys.stderr)
    print(f"reports written to {target}/conformance.md and results.json; {len(bad)} unexpected fail/error")
    return 1 if bad else 0


def _not_run_here(verdicts) -> list[str]:
    """One line per backend with unavailable cells: the reason most of them give, which carries
    the fix (the extra to install, a compiler, `bnconform setup`, a GPU machine)."""
    reasons = collections.defaultdict(collections.Counter)
    for v in verdicts:
        if v.status == "unavailable":
            reasons[v.adapter][v.detail] += 1
    return [f"not run here: {name} ({sum(c.values())} cells): {c.most_common(1)[0][0]}"
            for name, c in sorted(reasons.items())]


def _nothing_ran(verdicts) -> str:
    """The one line for a check in which every cell was unsupported or unavailable."""
    reasons = collections.Counter(f"{v.status}: {v.detail}" for v in verdicts)
    top = "; ".join(f"{reason} ({n} cell(s))" for reason, n in reasons.most_common(2))
    more = f"; and {len(reasons) - 2} other reason(s)" if len(reasons) > 2 else ""
    return f"bnconform: nothing could run: all {len(verdicts)} cell(s) were unsupported or unavailable: {top}{more}"


def cmd_check(args) -> int:
    """Exit 0 when every cell that could run conforms (pass or deviation), 1 when one fails or
    errors or when nothing could run at all, 2 for invalid input (raised as UsageError)."""
    from ..caseformat.validation import CaseError, load_case
    from ..execution.plan import plan

    try:
        cases = [load_case(p) for p in case_paths(args.paths or [case_root(None)])]
    except CaseError as exc:
        raise UsageError(str(exc)) from None
    if not cases:
        raise UsageError(f"check: Expected: at least one case file. Received: none under {', '.join(map(str, args.paths or [case_root(None)]))}")
    if not args.backend and not args.adapter:
        raise UsageError("check: Expected: --backend NAME or --adapter module:Class. Received: neither")
    selected, devices = selected_backends(args)
    verdicts, _ = _run_cells(plan(cases, selected, devices), len(selected), args.timeout, quiet=True)
    for v in verdicts:
        print(f"{v.status:11} {v.cell_id}" + (f": {v.detail}" if v.detail else ""))
    ran = [v for v in verdicts if v.status not in NOT_RUN]
    if not ran:
        print(_nothing_ran(verdicts), file=sys.stderr)
        return 1
    bad = [v for v in ran if v.status in UNEXPECTED]
    print(f"{len(ran) - len(bad)} conform, {len(bad)} fail/error, {len(verdicts) - len(ran)} not run "
          "(unsupported/unavailable)")
    return 1 if bad else 0


def cmd_list(args) -> int:
    from .listing import list_metadata, list_probe

    return list_probe(args.jobs) if args.probe else list_metadata()


# What a checked results document can still raise while it is merged, diffed or rendered: a
# combination no field check foresaw (it is the file's, so it is one line, not a traceback)
DOCUMENT_FAULTS = (KeyError, TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError, OverflowError)


def cmd_report(args) -> int:
    from ..reporting import results
    from ..reporting.writing import ReportsNotWritten, write_pages_as

    try:
        document = results.merge([results.read(Path(p)) for p in args.results])
        out = write_pages_as(document, args.output)
    except (results.ResultsError, *DOCUMENT_FAULTS) as exc:
        raise UsageError(bad_results_line(args.results, exc)) from None
    except ReportsNotWritten as exc:
        raise UsageError(f"report not written: {exc}") from None
    if args.merged:
        results.write(document, Path(args.merged))
    print(f"wrote {out} from {len(args.results)} result file(s), {len(document['verdicts'])} cells")
    return 0


def bad_results_line(paths, exc) -> str:
    """One line for a results file that reads as JSON but not as a results document."""
    from ..reporting import results

    if isinstance(exc, results.ResultsError):
        return str(exc)
    return (f"{', '.join(map(str, paths))}: Expected: results documents written by bnconform. Received: a document "
            f"that fails with {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


def cmd_diff(args) -> int:
    """One line per changed cell, then one summary line counting them by transition; exit 0 when
    no cell changed, 1 when some did (UsageError, exit 2, for an unreadable document)."""
    from ..reporting import results

    try:
        old, new = results.read(Path(args.old)), results.read(Path(args.new))
        lines = results.diff(old, new)
        summary = results.diff_summary(old, new) if lines else "no cell changed its verdict"
    except (results.ResultsError, *DOCUMENT_FAULTS) as exc:
        raise UsageError(bad_results_line([args.old, args.new], exc)) from None
    print("\n".join([*lines, summary]))
    return 1 if lines else 0


def cmd_bench(args) -> int:
    from .bench import bench

    return bench(args)


def _common(parser) -> None:
    parser.add_argument("--backend", action="append",
                        help="backend name, family (torch = torch.nn + torch.functional) or glob ('keras3.*'); "
                             "repeatable; default: all registered, or none when --adapter is given")
    parser.add_argument("--adapter", action="append", default=[], help="ad hoc adapter package.module:ClassName")
    parser.add_argument("--device", action="append",
                        help="device kind, e.g. cpu or cuda (repeatable; default: the kinds present here; an "
                             "absent one asked for gives unavailable cells)")
    parser.add_argument("--timeout", type=positive_float, default=120.0, help="seconds per cell before a backend is killed")


_CHECK_HELP = ("run your own case files; exit 0 when every cell that could run conforms (pass or declared "
               "deviation; unsupported/unavailable cells do not fail it), 1 when a cell fails or errors or "
               "nothing could run, 2 for invalid input")
_DIFF_HELP = ("cells whose verdict or error changed between two results.json, one line each, then a summary line "
              "counting them by transition; exit 0 when no cell changed, 1 when some changed, 2 for bad input "
              "(a file that is missing or not a results document)")


def register(sub) -> None:
    run = sub.add_parser("run", help="run the conformance matrix and write the reports (the main job)")
    _common(run)
    run.add_argument("--family", action="append", help="case family (repeatable; default: all)")
    run.add_argument("--cases", help="case directory (default: ./cases, else the vectors shipped with bnconform)")
    run.add_argument("--reports", default="reports",
                     help="report directory (default: reports); a run over less than the whole matrix writes "
                          "under <reports>/partial/<selection>/")
    run.add_argument("--out", help="write this run's reports into OUT instead")
    run.add_argument("--stepwise", action="store_true",
                     help="run each step from the state the case expects before it (stateful APIs too), so a "
                          "verdict names the first step that diverges; writes under reports/partial/")
    run.add_argument("--versions", help="comma-separated versions of the selected backends' framework (e.g. "
                     "2.1.2,2.13.0): each runs in an environment of its own and writes "
                     "<reports>/versions/<framework>-<version>/ (bnconform history gathers them)")
    run.add_argument("--jobs", type=positive_int, default=os.cpu_count() or 2, help="backends run at once")
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check", help=_CHECK_HELP, description=_CHECK_HELP)
    check.add_argument("paths", nargs="*", help="case files or directories (default: ./cases, else the vectors "
                                                "shipped with bnconform)")
    _common(check)
    check.set_defaults(func=cmd_check)
    lst = sub.add_parser("list", help="every backend from metadata: version, devices, what to install")
    lst.add_argument("--probe", action="store_true",
                     help="import each backend in its own process and report why one is unavailable (slow)")
    lst.add_argument("--jobs", type=positive_int, default=os.cpu_count() or 2, help="backends probed at once")
    lst.set_defaults(func=cmd_list)
    rep = sub.add_parser("report", help="re-render (and merge) results.json files into markdown")
    rep.add_argument("results", nargs="+", help="results.json files (later ones win per cell)")
    rep.add_argument("--output", "-o", default="reports/conformance.md")
    rep.add_argument("--merged", help="also write the merged results.json here")
    rep.set_defaults(func=cmd_report)
    dif = sub.add_parser("diff", help=_DIFF_HELP, description=_DIFF_HELP)
    dif.add_argument("old")
    dif.add_argument("new")
    dif.set_defaults(func=cmd_diff)
    ben = sub.add_parser("bench", help="median ms per case per backend, and the full-matrix wall time")
    ben.add_argument("--backend", action="append", help="backend name (repeatable; default: all available)")
    ben.add_argument("--family", action="append")
    ben.add_argument("--matrix", action="store_true", help="also time `pytest -n auto` over the matrix")
    ben.set_defaults(func=cmd_bench, adapter=[], device=None)  # selected like run's, without those options
