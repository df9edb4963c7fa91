"""The ``bnconform`` command line. Every user error is one line on stderr and exit status 2;
Ctrl-C is one line and exit status 130, SIGTERM the same with exit status 143 (128 + 15): the
host processes are killed, no traceback, no reports written."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from pathlib import Path

from .. import __version__
from .usage import DEFAULT_CASES, UsageError, case_paths, case_root


def _cmd_generate(args) -> int:
    from ..specs.generate import check, generate

    root = Path(args.cases)
    if args.check and not root.is_dir():
        raise UsageError(f"--cases: Expected: a directory of case files to check. Received: {root} (no such directory)")
    if args.check:
        problems = check(root)
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            print(f"{len(problems)} file(s) differ from the case specs", file=sys.stderr)
            return 1
        print(f"{root}: every case file matches the specs")
        return 0
    count = generate(root)
    print(f"wrote {count} cases under {root}")
    return 0


def _cmd_validate(args) -> int:
    from ..caseformat.validation import CaseError, load_case

    if args.tolerances or args.mutants or args.flagged_only:
        from .tolerance_audit import run_audit

        return run_audit(args)
    paths = case_paths(args.paths or [case_root(None)])
    bad, disagree = 0, 0
    for path in paths:
        try:
            case = load_case(path)
        except CaseError as exc:
            print(exc, file=sys.stderr)
            bad += 1
            continue
        if args.oracle:
            from ..specs.authoring import oracle_disagreement

            found = oracle_disagreement(case)
            if found:
                print(f"{path}: {found}", file=sys.stderr)
                disagree += 1
    print(f"{len(paths) - bad} valid, {bad} invalid" + (f"; {disagree} disagree with the oracle" if args.oracle else ""))
    return 2 if bad else 1 if disagree else 0


def _cmd_authoring(args) -> int:
    from ..caseformat.validation import CaseError

    try:
        return args.run(args)
    except CaseError as exc:
        print(f"bnconform {args.command}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"bnconform {args.command}: Expected: a readable file. Received: {exc}", file=sys.stderr)
        return 2


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line (not the usage block) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message} (see: {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="bnconform", description="Batch Normalization conformance suite")
    parser.add_argument("--version", action="version", version=f"bnconform {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="rebuild cases/ from the case specs")
    gen.add_argument("--cases", default=str(DEFAULT_CASES), help="case directory (default: cases)")
    gen.add_argument("--check", action="store_true", help="exit 1 and list files that differ; write nothing")
    gen.set_defaults(func=_cmd_generate)
    val = sub.add_parser("validate", help="check case files against the schema and their meaning")
    val.add_argument("paths", nargs="*", help="case files or directories (default: ./cases, else the shipped vectors)")
    val.add_argument("--oracle", action="store_true", help="also recompute each case with the oracle and name the "
                     "file, step, output and the knob that would explain a difference (exit 1)")
    val.add_argument("--tolerances", action="store_true", help="audit the error bounds instead: per output its largest "
                     "bound, scale and nearest mutant; exit 1 when a bound exceeds its scale or admits a mutant")
    val.add_argument("--mutants", metavar="FILE", help="with --tolerances: a Python file whose CATALOGUE lists wrong "
                     "implementations (default: tests/mutants.py when present)")
    val.add_argument("--flagged-only", action="store_true", help="with --tolerances: print only flagged outputs and the summary")
    val.set_defaults(func=_cmd_validate)
    from ..specs import authoring

    new = sub.add_parser("new", help="build a case file from a readable YAML/JSON description")
    new.add_argument("description", help="YAML or JSON with decimal numbers (see docs/case-format.md, 'Writing a case by hand')")
    new.add_argument("-o", "--output", help="case file to write (default: the description's name with .json)")
    new.add_argument("--expect", choices=("oracle", "given"), default="oracle",
                     help="oracle: compute every output; given: keep the outputs the description states")
    new.set_defaults(func=_cmd_authoring, run=authoring.new)
    show = sub.add_parser("show", help="print a case file in the readable form `bnconform new` reads")
    show.add_argument("case")
    show.set_defaults(func=_cmd_authoring, run=authoring.show)
    from .subcommands import register

    register(sub)
    from .fuzz import register as register_fuzz  # bnconform fuzz

    register_fuzz(sub)
    from .port import register_port  # bnconform port FROM TO

    register_port(sub)
    from .setup_backends import register_setup  # bnconform setup

    register_setup(sub)
    from .env_command import register_env  # bnconform env list|sync|clean

    register_env(sub)
    from .sweep import register_history  # bnconform history

    register_history(sub)
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be, so it takes the same way out (hosts killed)."""


def _raise_terminated(signum, frame):
    raise _Terminated


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """While the command runs, SIGTERM interrupts it as Ctrl-C does (main thread only; the
    previous handler comes back after, so a caller such as a test keeps its own)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv=None) -> int:
    parser = _parser()
    with _sigterm_as_interrupt():
        try:
            args = parser.parse_args(argv)
            return args.func(args)
        except UsageError as exc:
            print(f"bnconform: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:  # the scheduler has killed its hosts; reports are written only after a run
            terminated = isinstance(exc, _Terminated)
            print(f"bnconform: {'terminated (SIGTERM)' if terminated else 'interrupted'}; no reports written",
                  file=sys.stderr)
            return 143 if terminated else 130


if __name__ == "__main__":
    sys.exit(main())
