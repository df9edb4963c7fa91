"""``bnconform run --versions V1,V2,...``: the selected backends across versions of their framework.

Each version runs in an environment of its own (``Adapter.version_environment``: the backend's
requirements with ``<framework>==<version>`` and its ``sweep_requirements``, built with uv in the
user cache, bnconform.execution.environments), one version after the other, and writes a whole
report for that version into ``<reports>/versions/<framework>-<version>/`` (``--out DIR``:
``DIR/<framework>-<version>/``). Every verdict carries the version its environment reported.
``bnconform history`` reads those folders into ``reports/history.md``.

The selected backends must share one framework (one pin per run): ``--backend torch`` sweeps
torch.nn and torch.functional together; torch.nn with tf.nn is refused in one line.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from .usage import UsageError

_VERSION = re.compile(r"^[0-9]+(\.[0-9A-Za-z]+)*([.+-][0-9A-Za-z.]+)?$")


def parse_versions(text: str) -> list[str]:
    """'2.1.2,2.5.1' -> ['2.1.2', '2.5.1'], or a UsageError naming the bad item."""
    versions = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in versions if not _VERSION.match(v)]
    if not versions or bad:
        raise UsageError(f"--versions: Expected: comma-separated release numbers such as 2.1.2,2.5.1. "
                         f"Received: {bad[0] if bad else text!r}")
    return list(dict.fromkeys(versions))


def swept_framework(selected) -> str:
    """The one framework distribution every selected backend reports, or a UsageError."""
    from ..execution.adapter_classes import adapter_class

    frameworks = {name: getattr(adapter_class(name), "framework", "") for name in selected}
    distinct = sorted(set(frameworks.values()))
    if len(distinct) != 1 or not distinct[0]:
        shown = ", ".join(f"{n} ({f or 'no framework'})" for n, f in frameworks.items())
        raise UsageError(f"--versions: Expected: backends of one framework (one pin per run). Received: {shown}")
    return distinct[0]


def sweep(args, cases, selected, devices, run_and_report) -> int:
    """Run the cells once per version, each version's backends in that version's environment;
    ``run_and_report(args, cells, selection, target)`` is `run`'s own. Exit 1 when any version
    had an unexpected fail or error."""
    from ..execution import environments
    from ..execution.adapter_classes import adapter_class
    from ..execution.plan import environment_problem, missing_requirement, plan

    framework, worst = swept_framework(selected), 0
    root = Path(args.out) if args.out else Path(args.reports) / "versions"
    for version in parse_versions(args.versions):
        for name in selected:
            environments.run_in(name, adapter_class(name).version_environment(version))
        missing_requirement.cache_clear()
        environment_problem.cache_clear()
        target = root / f"{framework}-{version}"
        print(f"--- {framework} {version} -> {target}", file=sys.stderr, flush=True)
        selection = {"backend": list(selected), "versions": version}
        worst = max(worst, run_and_report(args, plan(cases, selected, devices), selection, target))
    for name in selected:
        environments.run_in(name, None)
    print(f"version reports under {root}; `bnconform history` gathers them into reports/history.md")
    return worst


def cmd_history(args) -> int:
    """Write the history page of the sweeps under ``--versions-dir`` to ``--out``."""
    from ..reporting.history import render

    root = Path(args.versions_dir)
    if not root.is_dir() or not any(root.glob("*/results.json")):
        raise UsageError(f"--versions-dir: Expected: a folder of version sweeps (<framework>-<version>/results.json, "
                         f"written by bnconform run --versions). Received: {str(root)!r}, which holds none")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(root), encoding="utf-8")
    print(f"history of {len(list(root.glob('*/results.json')))} version reports written to {out}")
    return 0


def register_history(sub) -> None:
    history = sub.add_parser("history", help="per backend, the behaviours and declared findings whose verdict "
                             "changed between framework versions, from the sweeps of `run --versions`")
    history.add_argument("--versions-dir", default="reports/versions", help="where the sweeps wrote their reports "
                         "(default: reports/versions)")
    history.add_argument("--out", default="reports/history.md", help="the page to write (default: reports/history.md)")
    history.set_defaults(func=cmd_history)
