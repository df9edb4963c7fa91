"""``bnconform env list | sync | clean``: the Python environments backends run in (issue 21).

A backend that cannot share the user's environment declares one of its own
(``Adapter.python_environment``; tflearn, TensorLayer and the real tf-slim need TensorFlow 2.12
with NumPy < 1.24, mindspore NumPy < 2); a version sweep (``run --versions``) adds one per version.
``bnconform run`` and pytest build them on first use; these commands show, build and remove them
ahead of time. They live in ``~/.cache/bnconform/envs`` (``BNCONFORM_ENVS`` overrides).

* ``list``: every declared environment (built or not, with its backends) and every folder there.
* ``sync [--backend NAME ...]``: build the environments of those backends (default: all); one line
  each; exit 1 when one cannot be built (the line says uv's error).
* ``clean [--all]``: remove the folders no registered backend declares (a changed pin leaves the
  old one behind), or all of them.
"""

from __future__ import annotations

import shutil
import sys


def declared(names=None) -> dict:
    """Environment -> the registered backends (among ``names``; default all) declaring it."""
    from ..adapters.registry import known
    from ..execution.adapter_classes import adapter_class

    found: dict = {}
    for name in names or known():
        cls = adapter_class(name)
        env = getattr(cls, "python_environment", None)
        if env is not None:
            found.setdefault(env, []).append(name)
    return found


def _list(args) -> int:
    from ..execution.environments import installed, recent_failure

    envs = declared()
    for env, names in envs.items():
        state = "built" if env.ready() else (f"failed: {recent_failure(env)}" if recent_failure(env) else "not built yet")
        print(f"{env.label:14} {state:14.200} {', '.join(names)}\n  {env.path}\n  {' '.join(env.requirements)}")
    declared_paths = {str(env.path) for env in envs}
    for record in installed():
        if record["path"] not in declared_paths:
            kind = "incomplete" if record.get("incomplete") else f"built {record.get('built', '?')}"
            print(f"{record['label']:14} {kind}, declared by no registered backend (a sweep's, or stale): "
                  f"{record['path']}")
    if not envs:
        print("no registered backend declares an environment of its own")
    return 0


def _sync(args) -> int:
    from ..execution.environments import EnvironmentBuildError, ensure
    from .usage import selected_backends

    names = selected_backends(args)[0] if args.backend else None
    failed = 0
    for env, owners in declared(names).items():
        try:
            ensure(env, log=lambda line: print(line, file=sys.stderr, flush=True))
            print(f"{env.label}: ready ({', '.join(owners)}): {env.path}")
        except EnvironmentBuildError as exc:
            failed += 1
            print(f"{env.label}: cannot be built ({', '.join(owners)}): {exc}")
    return 1 if failed else 0


def _clean(args) -> int:
    from ..adapters.environment import envs_root

    keep = set() if args.all else {env.path for env in declared()}
    root = envs_root()
    removed = [p for p in sorted(root.iterdir()) if p.name != "source" and p not in keep
               and not (p.suffix in (".lock", ".failed") and root / p.stem in keep)] if root.is_dir() else []
    for path in removed:
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        print(f"removed {path}")
    print(f"{len(removed)} removed from {root}" + ("" if args.all else " (kept the declared environments)"))
    return 0


def register_env(sub) -> None:
    env = sub.add_parser("env", help="list, build (sync) or remove (clean) the Python environments of backends "
                         "that need their own (tflearn, TensorLayer, tf-slim, mindspore, version sweeps)")
    actions = env.add_subparsers(dest="env_action", required=True, metavar="{list,sync,clean}")
    actions.add_parser("list", help="declared environments, built or not, and every folder in the cache").set_defaults(
        func=_list)
    sync = actions.add_parser("sync", help="build the environments (default: of every registered backend)")
    sync.add_argument("--backend", action="append", default=[], help="only this backend's (repeatable; families "
                      "and globs as in run)")
    sync.set_defaults(adapter=[], device=None)
    sync.set_defaults(func=_sync)
    clean = actions.add_parser("clean", help="remove environments no registered backend declares")
    clean.add_argument("--all", action="store_true", help="remove every environment")
    clean.set_defaults(func=_clean)
