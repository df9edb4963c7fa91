"""Shim for imports of the old module name; remove once nothing imports it. See bnconform.execution.scheduler."""

from .execution.scheduler import Progress, run_cells  # noqa: F401
