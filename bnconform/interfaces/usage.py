"""What the command-line modules share: the one-line user error, case-path expansion and the
backends and devices a command's options select.

A module of its own so that ``cli`` (the parser), ``subcommands`` and ``fuzz`` all import it and
none imports another for it.
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
