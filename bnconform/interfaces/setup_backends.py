"""``bnconform setup``: make every backend this machine can run runnable, beyond what pip installs.

pip installs the Python frameworks (the extras). An executable backend may need more: the
TensorFlow.js rows need ``npm ci`` in their folder. Its manifest declares that as ``setup``
(docs/protocol.md); this command runs it where something the backend requires is missing and
the command's program is on PATH. Then it lists every backend that still cannot run here, with
the planner's own reason and fix (a missing extra, a compiler, Node.js), the same words the
report's "not runnable here" list uses. A setup that fails (no network, say) is one line; its
rows stay unavailable and the command still exits 0, so ``bnconform setup && bnconform run``
runs what can run (``--strict``: exit 1 instead).
"""

from __future__ import annotations

import shutil
import subprocess
import sys

from .usage import positive_float


def exec_rows() -> list:
    """One manifest row per executable backend folder among the registered backends."""
    from ..adapters.exec_manifest import read_manifest
    from ..adapters.registry import known

    folders = dict.fromkeys(target[5:].partition("#")[0] for target in known().values() if target.startswith("exec:"))
    return [read_manifest(folder)[0] for folder in folders]


def set_up(row, timeout: float) -> str | None:
    """Run the row's setup command in its folder when it is needed and can run; the one line
    saying what happened (None when there was nothing to do)."""
    from ..adapters.exec_manifest import missing

    if not row.setup or missing(row) is None:
        return None
    if shutil.which(row.setup[0]) is None:
        return f"{row.folder.name}: not set up: {row.setup[0]} is not on PATH"
    print(f"setting up {row.folder.name}: {' '.join(row.setup)}", file=sys.stderr, flush=True)
    try:
        done = subprocess.run(list(row.setup), check=False, cwd=row.folder, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"{row.folder.name}: setup failed: {' '.join(row.setup)} took more than {timeout:g} s"
    if done.returncode != 0:
        last = ((done.stderr or done.stdout).strip().splitlines() or ["no output"])[-1]
        return f"{row.folder.name}: setup failed (exit {done.returncode}): {last[:200]}"
    return f"{row.folder.name}: set up"


def not_runnable() -> list[str]:
    """One line per registered backend that cannot run here, with why and the fix."""
    from ..adapters.registry import known
    from ..execution.plan import missing_requirement

    return [f"not runnable here: {name}: {reason}" for name in known() if (reason := missing_requirement(name))]


def cmd_setup(args) -> int:
    results = [line for row in exec_rows() if (line := set_up(row, args.timeout))]
    print("\n".join([*results, *not_runnable()]) or "every registered backend can run here")
    return 1 if args.strict and any(" failed" in line or "not set up" in line for line in results) else 0


def register_setup(sub) -> None:
    setup = sub.add_parser("setup", help="install what the executable backends need (npm ci for TensorFlow.js) "
                                         "and list every backend that still cannot run here, with the fix")
    setup.add_argument("--timeout", type=positive_float, default=600.0, help="seconds per setup command")
    setup.add_argument("--strict", action="store_true", help="exit 1 when a setup command fails or cannot run")
    setup.set_defaults(func=cmd_setup)
