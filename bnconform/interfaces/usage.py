"""What the command-line modules share: the one-line user error and case-path expansion.

A module of its own so that ``cli`` (the parser) and ``commands`` (the subcommands) both import
it and neither imports the other at import time.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_CASES = Path("cases")


class UsageError(Exception):
    """A bad option or input; the message is the whole line shown to the user (exit 2)."""


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
