"""Adapter classes by name, looked up once per process without importing any framework.

A registered name resolves through the registry table (read once: scanning entry points costs
~20 ms a time); an ad hoc ``module:Class`` path resolves as given. Adapter modules import no
framework, so loading a class is cheap; a registered module that fails to import gives None, so
its host can report the failure as error cells instead of the whole run stopping.
"""

from __future__ import annotations

import functools

from ..adapters.registry import adhoc_target, known, load_class, resolve


@functools.lru_cache(maxsize=None)
def registered() -> dict[str, str]:
    """The registry table, read once per process (scanning entry points costs ~20 ms a time)."""
    return known()


def target_of(name: str) -> str:
    """The "module:Class" path a host imports for a registered name, the name of a selected ad hoc
    adapter, or an ad hoc path."""
    return registered().get(name) or adhoc_target(name) or name


@functools.lru_cache(maxsize=None)
def adapter_class(name: str):
    """The adapter class, or None for a registered adapter whose module does not import (its
    host reports the import failure as error cells instead of stopping the whole run)."""
    if name not in registered():
        return resolve(name)  # an ad hoc path: a RegistryError is the user's one-line error
    try:
        return load_class(registered()[name])
    except Exception:  # noqa: BLE001 (a module mid-edit may raise anything at import)
        return None


def device_kinds(name: str) -> tuple[str, ...]:
    """The device kinds the adapter declares; ("cpu",) for a registered module that does not import."""
    cls = adapter_class(name)
    return cls.device_kinds if cls is not None else ("cpu",)
