"""Shim for imports of the old module name; remove once nothing imports it. See bnconform.execution.plan."""

from .execution.plan import Cell, adapter_metadata, discover_cases, plan, select_adapters  # noqa: F401
