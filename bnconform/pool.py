"""Shim for imports of the old module name; remove once nothing imports it. See bnconform.execution.controller."""

from .execution.controller import HostProcess, Hosts  # noqa: F401


class AdapterProcess(HostProcess):
    """The old one-adapter worker handle: a host process serving only ``name``."""

    def __init__(self, name, cell_timeout=120.0):
        super().__init__([name], cell_timeout)
        self.name = name

    def info(self, name=None) -> dict:
        return super().info(name or self.name)
