"""The outcome of one cell (case x backend x device), as stored in reports/results.json.

Statuses: pass; fail (with the numbers); deviation (declared by the adapter and observed, each
with its kind); unsupported (the adapter cannot express the case, with the reason);
unavailable (framework or device absent here); error (an unexpected exception, crash or hang).
"""

from __future__ import annotations

from dataclasses import dataclass, field

STATUSES = ("pass", "fail", "deviation", "unsupported", "unavailable", "error")
# A deviation's kind, from this closed set (worst first: the report ranks findings this way).
DEVIATION_KINDS = ("defect", "precision", "dtype", "edge")
# How a row runs the layer (``Adapter.execution_mode``): the framework's own call, a jit compiler's program,
# an exporter's graph in a deployment runtime, or BN folded into a preceding convolution / linear.
MODES = ("eager", "compiled", "exported", "folded")


def cell_id(case: str, adapter: str, device: str) -> str:
    """The one spelling of a cell everywhere outside pytest: ``momentum/decay_0.9[torch.nn-cpu]``."""
    return f"{case}[{adapter}-{device}]"


@dataclass
class Verdict:
    """One judged cell. ``deviations`` names every declared deviation observed in the cell and
    ``kinds`` their kinds (sorted by DEVIATION_KINDS); both are empty unless status is deviation.
    ``unobserved``: outputs the case expects that the API cannot report (a stateless API's running
    statistics: bnconform.judging.stepwise); the cell was judged on the rest."""

    case: str
    family: str
    adapter: str
    device: str
    status: str
    detail: str = ""
    deviations: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    mismatches: list[dict] = field(default_factory=list)
    compared: list[str] = field(default_factory=list)
    seconds: float = 0.0
    version: str = ""
    unobserved: list[str] = field(default_factory=list)

    @property
    def cell_id(self) -> str:
        return cell_id(self.case, self.adapter, self.device)

    def to_json(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, obj: dict) -> "Verdict":
        return cls(**obj)
