"""Judging one cell (case x adapter x device) into exactly one verdict.

Verdicts: pass; fail (with the numbers); deviation (declared by the adapter and observed);
unsupported (the adapter cannot express the case, with the reason); unavailable (framework or
device absent here); error (an unexpected exception, one line). A declared deviation that is
not observed is a fail, so declarations cannot go stale.
"""

from __future__ import annotations

import re
import time
import traceback
from dataclasses import dataclass, field

from . import oracle
from .adapters.base import Adapter, Deviation, MatchesVariant, Mismatches, Raises, Unsupported, uses_extensions
from .compare import Mismatch, compare_case
from .model import Case

STATUSES = ("pass", "fail", "deviation", "unsupported", "unavailable", "error")


@dataclass
class Verdict:
    """The outcome of one cell, as stored in reports/results.json."""

    case: str
    family: str
    adapter: str
    device: str
    status: str
    detail: str = ""
    deviation: str | None = None
    mismatches: list[dict] = field(default_factory=list)
    compared: list[str] = field(default_factory=list)
    seconds: float = 0.0
    version: str = ""

    @property
    def cell_id(self) -> str:
        return f"{self.case}[{self.adapter}-{self.device}]"

    def to_json(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, obj: dict) -> "Verdict":
        return cls(**obj)


def _exception_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def _observe(deviation: Deviation, case: Case, results, exc) -> str | None:
    """None if the declared behaviour is observed, else what was seen instead."""
    behaviour = deviation.behaviour
    if isinstance(behaviour, Raises):
        if exc is None:
            return "no exception was raised"
        if type(exc).__name__ != behaviour.exception or not re.search(behaviour.match, str(exc)):
            return f"raised {_exception_line(exc)}"
        return None
    if exc is not None:
        return f"raised {_exception_line(exc)}"
    canonical, _ = compare_case(case, results)
    if isinstance(behaviour, Mismatches):
        outputs = {m.output for m in canonical}
        if outputs and outputs <= set(behaviour.outputs):
            return None
        return "results match the oracle" if not outputs else f"mismatching outputs: {sorted(outputs)}"
    if not canonical:
        return "results match the oracle"
    variant = behaviour.variant(case)
    against_variant, _ = compare_case(case, results, oracle.run_case(variant))
    return against_variant[0].line() + " (against the declared variant)" if against_variant else None


def _verdict_from_results(case, adapter, device, deviation, results, exc) -> tuple[str, str, list, list]:
    if deviation is not None:
        problem = _observe(deviation, case, results, exc)
        if problem is None:
            return "deviation", f"{deviation.behaviour.describe()}: {deviation.explanation}", [], []
        return "fail", f"declared deviation not observed ({deviation.name}: expected it "\
                       f"{deviation.behaviour.describe()}); {problem}", [], []
    if exc is not None:
        return "error", _exception_line(exc), [], []
    mismatches, compared = compare_case(case, results)
    if not mismatches:
        return "pass", "", [], compared
    detail = mismatches[0].line() + (f" (+{len(mismatches) - 1} more)" if len(mismatches) > 1 else "")
    return "fail", detail, [m.to_json() for m in mismatches[:8]], compared


def applicable_deviation(adapter: Adapter, case: Case, device: str) -> Deviation | None:
    """The first declared deviation whose selector matches this cell."""
    return next((d for d in adapter.deviations if d.applies(case, device)), None)


def judge(adapter: Adapter, case: Case, device: str) -> Verdict:
    """Run one cell and classify it. Never raises for framework behaviour."""
    base = dict(case=case.id, family=case.family, adapter=adapter.name, device=device)
    reason = uses_extensions(case, adapter.handles_extensions) or adapter.supports(case, device)
    if reason:
        return Verdict(**base, status="unsupported", detail=reason)
    deviation = applicable_deviation(adapter, case, device)
    start, results, exc = time.perf_counter(), None, None
    try:
        results = adapter.run(case, device)
    except Unsupported as unsupported:
        return Verdict(**base, status="unsupported", detail=str(unsupported))
    except Exception as caught:  # the framework's own exception is data, not a crash
        exc = caught
        exc.__bnconform_trace__ = traceback.format_exc(limit=3)
    seconds = time.perf_counter() - start
    try:
        status, detail, mismatches, compared = _verdict_from_results(case, adapter, device, deviation, results, exc)
    except ValueError as bad_results:  # wrong number of steps, missing y: the adapter's bug
        status, detail, mismatches, compared = "error", f"adapter returned bad results: {bad_results}", [], []
    return Verdict(**base, status=status, detail=detail, deviation=deviation.name if deviation and status == "deviation" else None,
                   mismatches=mismatches, compared=compared, seconds=seconds)
