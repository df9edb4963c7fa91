"""What the command-line modules share: the one-line user error, case-path expansion and the
backends and devices a command's options select.

A module of its own so that ``cli`` (the parser), ``subcommands`` and ``fuzz`` all import it and
none imports another for it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_CASES = Path("cases")  # where `generate` writes; readers use case_root()


class UsageError(Exception):
    """A bad option or input; the message is the whole line shown to the user (exit 2)."""


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (--jobs 0 would wait for a worker that never comes)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"Expected: a whole number >= 1. Received: {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"Expected: a number > 0. Received: {text!r}")
    return value


def case_root(option) -> Path:
    """The case root a command reads: the option's value, else ``./cases`` when the current
    directory has one, else the vectors shipped with bnconform (bnconform.caseformat.shipped_data)."""
    from ..caseformat.shipped_data import default_cases

    return Path(option) if option else default_cases()


def is_default_case_root(root) -> bool:
    """Whether ``root`` is the case root a command reads by default (a whole-matrix run over it
    may replace reports/)."""
    return Path(root).resolve() == case_root(None).resolve()


def case_paths(paths) -> list[Path]:
    """Expand directories to the *.json case files below them (schema.json excluded)."""
    found = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*.json") if p.name != "schema.json")
        elif path.exists():
            found.append(path)
        else:
            raise UsageError(f"{path}: Expected: a case file or directory. Received: no such path")
    return found


def selected_backends(args):
    """(selected names, device kinds to plan) from --backend, --adapter and --device, or a UsageError
    naming the bad word."""
    from ..adapters.registry import RegistryError
    from ..execution.selection import select_backends, select_devices

    try:
        selected = select_backends(args.backend, args.adapter)
        return selected, select_devices(args.device, selected)
    except RegistryError as exc:
        raise UsageError(str(exc)) from None


def matrix_cases(cases, families=None) -> tuple[list, list[str]]:
    """(the cases of ``families`` (all when empty) under the case root ``cases``, every family
    there), or a UsageError naming the missing directory, the unknown family or the bad file."""
    from ..caseformat.validation import CaseError
    from ..execution.plan import discover_cases, unknown_families

    root = Path(cases)
    if not root.is_dir():
        raise UsageError(f"--cases: Expected: a directory of case families. Received: {root} (no such directory)")
    all_families, unknown = unknown_families(root, families)
    if unknown:
        raise UsageError(f"--family: Expected: one of {', '.join(all_families)} under {root}. Received: {', '.join(unknown)}")
    try:
        return discover_cases(root, families), all_families
    except CaseError as exc:
        raise UsageError(str(exc)) from None
