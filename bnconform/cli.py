"""The ``bnconform`` command line. Every user error is one line on stderr and exit status 2;
Ctrl-C is one line and exit status 130, with no traceback and no reports written."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .usage import DEFAULT_CASES, UsageError, case_paths


def _cmd_generate(args) -> int:
    from .generate import check, generate

    root = Path(args.cases)
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
    from .validation import CaseError, load_case

    paths = case_paths(args.paths or [DEFAULT_CASES])
    bad = 0
    for path in paths:
        try:
            load_case(path)
        except CaseError as exc:
            print(exc, file=sys.stderr)
            bad += 1
    print(f"{len(paths) - bad} valid, {bad} invalid")
    return 2 if bad else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bnconform", description="Batch Normalization conformance suite")
    parser.add_argument("--version", action="version", version=f"bnconform {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="rebuild cases/ from the case specs")
    gen.add_argument("--cases", default=str(DEFAULT_CASES), help="case directory (default: cases)")
    gen.add_argument("--check", action="store_true", help="exit 1 and list files that differ; write nothing")
    gen.set_defaults(func=_cmd_generate)
    val = sub.add_parser("validate", help="check case files against the schema and their meaning")
    val.add_argument("paths", nargs="*", help="case files or directories (default: cases)")
    val.set_defaults(func=_cmd_validate)
    from .commands import register

    register(sub)
    from .port import register_port  # bnconform port FROM TO

    register_port(sub)
    return parser


def main(argv=None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
        return args.func(args)
    except UsageError as exc:
        print(f"bnconform: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the scheduler has killed its hosts; reports are written only after a run
        print("bnconform: interrupted; no reports written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
