"""Which backends and devices a run means, decided from names and metadata alone.

* ``--backend torch`` selects the family: every registered name equal to ``torch`` or starting
  with ``torch.``; an exact registered name selects only itself (``flax.linen`` is not also
  ``flax.linen.exact_variance``); a name with ``*?[`` is an fnmatch glob (``'keras3.*'``).
* ``--adapter module:Class`` alone runs only that adapter; no --backend and no --adapter means
  every registered backend.
* Devices default to the kinds present on this machine (cpu always; cuda kinds only where an
  NVIDIA driver is visible), so a CPU machine does not plan cells that can only be unavailable.
  A device asked for explicitly but absent still gets its cells, each unavailable with the reason.
* Whether an adapter's framework is installed is :func:`missing_module` (located with
  ``importlib.util.find_spec``, never imported); the planner and ``bnconform list`` both ask it.

Nothing here imports a framework; resolving a class imports only bnconform's adapter module.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import importlib.util
import os
import re
import shutil

from ..adapters.registry import RegistryError, known, register_adhoc
from .adapter_classes import device_kinds

_GLOB = re.compile(r"[*?\[]")


class SelectionError(RegistryError):
    """A --device (or similar) option that names nothing the selected backends declare."""


def _families(names) -> list[str]:
    """Every dotted prefix of the registered names: torch, tf, tf_keras, flax, flax.linen, ..."""
    prefixes = {".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 1)}
    return sorted(prefixes - set(names))


def _members(word: str, names) -> list[str]:
    """Registered names meant by one --backend word (exact name, glob, or family prefix)."""
    if word in names:
        return [word]
    if _GLOB.search(word):
        return [n for n in names if fnmatch.fnmatchcase(n, word)]
    return [n for n in names if n.startswith(word + ".")]


def _unknown(word: str, names) -> RegistryError:
    """One line: what was asked, the nearest names (difflib), and every name accepted."""
    close = difflib.get_close_matches(word, [*names, *_families(names)], n=4, cutoff=0.6)
    suggestions = list(dict.fromkeys(m for c in close for m in _members(c, names)))
    hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else " No registered name is close to it."
    return RegistryError(f"unknown backend {word!r}.{hint} Expected one of: {', '.join(names)}; "
                         f"a family ({', '.join(_families(names))}); a glob such as 'keras3.*'; "
                         f"or package.module:ClassName")


def select_backends(backends, adapters) -> list[str]:
    """The names to run, in registry order, then the ad hoc ``module:Class`` paths' adapters in the
    given order, each under its class's own ``name`` (registered for this process, so a cell id is
    the same string in every command, report and pytest id).

    Raises RegistryError (one line) for a word that selects nothing or an ad hoc path that does
    not resolve to an Adapter subclass.
    """
    names = list(known())
    backends, adapters = list(backends or []), list(adapters or [])
    if not backends and not adapters:
        return names
    chosen, adhoc = set(), []
    for word in backends:
        if ":" in word:  # a module:Class given to --backend works like --adapter
            adhoc.append(word)
            continue
        members = _members(word, names)
        if not members:
            raise _unknown(word, names)
        chosen.update(members)
    # register_adhoc raises RegistryError naming the path and what was expected
    named = [register_adhoc(path) for path in dict.fromkeys([*adhoc, *adapters])]
    return [n for n in names if n in chosen] + [n for n in dict.fromkeys(named) if n not in chosen]


@functools.lru_cache(maxsize=None)
def nvidia_present() -> bool:
    """True where an NVIDIA driver is visible (device node, proc entry or nvidia-smi on PATH); asks
    the OS, never a framework. Asked once per process: the planner asks per cell."""
    return (os.path.exists("/dev/nvidiactl") or os.path.isdir("/proc/driver/nvidia")
            or shutil.which("nvidia-smi") is not None)


def device_present(kind: str) -> bool:
    """cpu always; cuda and its variants (cuda-nocudnn, ...) only with an NVIDIA driver."""
    if kind == "cpu":
        return True
    return kind.split("-")[0] == "cuda" and nvidia_present()


def present_device_kinds(declared=("cpu", "cuda")) -> tuple[str, ...]:
    """The kinds among ``declared`` that this machine has."""
    return tuple(k for k in declared if device_present(k))


def missing_module(requires) -> str | None:
    """The first required module whose top-level package cannot be found, located without importing."""
    for module in requires:
        top = module.partition(".")[0]
        try:
            if importlib.util.find_spec(top) is None:
                return module
        except (ImportError, ValueError):  # a namespace or broken parent: as good as absent
            return module
    return None


def declared_kinds(name: str) -> tuple[str, ...]:
    """An adapter's declared device kinds; ("cpu",) when its module is broken, so its host can
    report the import failure as error cells instead of the whole run stopping (the planner's
    cached lookup: bnconform.execution.adapter_classes.device_kinds)."""
    return tuple(device_kinds(name))


def select_devices(requested, selected) -> list[str]:
    """The device kinds to plan: those asked for (each declared by some selected backend), or by
    default every declared kind present here. Raises SelectionError for an unknown kind."""
    declared = list(dict.fromkeys(k for name in selected for k in declared_kinds(name)))
    if not requested:
        return list(present_device_kinds(declared))
    for kind in requested:
        if kind not in declared:
            raise SelectionError(f"--device: Expected: one of {', '.join(declared)} (declared by the selected "
                                 f"backends). Received: {kind!r}")
    return list(dict.fromkeys(requested))


def is_whole_matrix(selected, families, devices=None, all_families=None) -> bool:
    """True when a run covers every registered backend, every case family and every device present
    here, and nothing ad hoc: only such a run may replace the tracked reports/."""
    if list(selected) != list(known()):
        return False
    if families and (all_families is None or not set(all_families) <= set(families)):
        return False
    if devices is None:
        return True
    present = present_device_kinds(list(dict.fromkeys(k for n in selected for k in declared_kinds(n))))
    return set(present) <= set(devices)


def selection_slug(selection: dict) -> str:
    """A directory name for a partial run, from its options, e.g. ``backend-torch__device-cpu``."""
    parts = []
    for key in sorted(selection):
        values = selection[key] if isinstance(selection[key], (list, tuple)) else [selection[key]]
        words = [str(v).replace("*", "any").split(":")[-1] for v in values]
        parts.append(f"{key}-" + "+".join(words))
    slug = re.sub(r"[^A-Za-z0-9._+-]+", "_", "__".join(parts)).strip("._") or "selection"
    return slug[:100]
