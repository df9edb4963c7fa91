"""Judging one cell (case x adapter x device) into exactly one :class:`~.verdict.Verdict`.

Order: the adapter's declared capabilities (and its residual ``supports``) may make the cell
*unsupported*; otherwise the adapter runs and its results are compared with the oracle's.

Every declared deviation whose selector matches the cell is verified, not just the first:

* a raised exception must match one declared ``Raises`` (else fail; error when none is declared);
* otherwise the results must agree with the oracle run on the case with every applicable
  ``MatchesVariant`` applied, except in outputs named by an applicable ``Mismatches``;
* and each applicable deviation must be needed: a variant whose removal still explains the
  results, or a ``Mismatches`` none of whose outputs differ, is stale, and the cell fails.
"""

from __future__ import annotations

import time
import traceback

from ..caseformat.model import Case
from ..reference import oracle
from .capabilities import unsupported_reason
from .compare import compare_case
from .declarations import AdapterContract, Deviation, MatchesVariant, Mismatches, Raises, Unsupported
from .verdict import DEVIATION_KINDS, STATUSES, Verdict  # noqa: F401  (STATUSES re-exported)


def _exception_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def _names(deviations) -> str:
    return ", ".join(d.name for d in deviations)


def _expected_under(case: Case, variants: list[Deviation]):
    """The oracle's results for the case with each variant applied in turn (None: the case file's)."""
    if not variants:
        return None
    changed = case
    for deviation in variants:
        changed = deviation.behaviour.variant(changed)
    return oracle.run_case(changed)


def _unexplained(case, results, variants, allowed: set[str]):
    """Mismatches left after applying ``variants`` and ignoring the ``allowed`` outputs."""
    mismatches, _ = compare_case(case, results, _expected_under(case, variants))
    return [m for m in mismatches if m.output not in allowed]


def _redundant_variant(case, results, variants, allowed: set[str]) -> Deviation | None:
    """The first variant whose removal still leaves the results explained (it is not needed)."""
    for deviation in variants:
        if not _unexplained(case, results, [d for d in variants if d is not deviation], allowed):
            return deviation
    return None


def _unneeded_mask(masks, differing: set[str]) -> tuple[Deviation, str] | None:
    """The first Mismatches declaration none of whose outputs differ, with what was seen."""
    for deviation in masks:
        if not differing & set(deviation.behaviour.outputs):
            return deviation, ("results match the oracle" if not differing
                               else f"none of {list(deviation.behaviour.outputs)} differ (differing: {sorted(differing)})")
    return None


def _not_observed(deviations, problem: str) -> tuple[str, str]:
    expected = "; ".join(f"{d.name}: {d.behaviour.describe()}" for d in deviations)
    return "fail", f"declared deviation not observed ({expected}); {problem}"


def verify(case: Case, applicable: list[Deviation], results, exc) -> tuple[str, str, list[Deviation]]:
    """(status, detail, observed deviations) for the cell's outcome against its declarations."""
    raises = [d for d in applicable if isinstance(d.behaviour, Raises)]
    if exc is not None:
        matching = [d for d in raises if d.behaviour.matches(exc)]
        if matching:
            return "deviation", _detail(matching), matching
        if applicable:
            return (*_not_observed(raises or applicable, f"raised {_exception_line(exc)}"), [])
        return "error", _exception_line(exc), []
    if raises:
        return (*_not_observed(raises, "no exception was raised"), [])
    others = [d for d in applicable if not isinstance(d.behaviour, Raises)]
    variants = [d for d in others if isinstance(d.behaviour, MatchesVariant)]
    masks = [d for d in others if isinstance(d.behaviour, Mismatches)]
    allowed = {o for d in masks for o in d.behaviour.outputs}
    against, _ = compare_case(case, results, _expected_under(case, variants))
    left = [m for m in against if m.output not in allowed]
    redundant = _redundant_variant(case, results, variants, allowed)
    if redundant is not None:  # one variant too many: name it rather than the whole set
        return (*_not_observed([redundant], "the results are explained without it"), [])
    if left:
        return (*_not_observed(others, left[0].line() + f" (against the declared {_names(others)})"), [])
    unneeded = _unneeded_mask(masks, {m.output for m in against})
    if unneeded:
        return (*_not_observed([unneeded[0]], unneeded[1]), [])
    return "deviation", _detail(others), others


def _detail(observed: list[Deviation]) -> str:
    return " | ".join(f"{d.behaviour.describe()}: {d.explanation}" for d in observed)


def _plain(case: Case, results) -> tuple[str, str, list, list]:
    mismatches, compared = compare_case(case, results)
    if not mismatches:
        return "pass", "", [], compared
    detail = mismatches[0].line() + (f" (+{len(mismatches) - 1} more)" if len(mismatches) > 1 else "")
    return "fail", detail, [m.to_json() for m in mismatches[:8]], compared


def applicable_deviations(adapter: AdapterContract, case: Case, device: str) -> list[Deviation]:
    """Every declared deviation whose selector matches this cell."""
    return [d for d in adapter.deviations if d.applies(case, device)]


def cannot_express(adapter: AdapterContract, case: Case, device: str) -> str | None:
    """The unsupported reason from the declared capabilities, then the adapter's own limits."""
    return unsupported_reason(adapter.capabilities, case, device, adapter.name) or adapter.supports(case, device)


def _run(adapter: AdapterContract, case: Case, device: str):
    """(results, exception, seconds); Unsupported propagates."""
    start, results, exc = time.perf_counter(), None, None
    try:
        results = adapter.run(case, device)
    except Unsupported:
        raise
    except Exception as caught:  # the framework's own exception is data, not a crash
        exc = caught
        exc.__bnconform_trace__ = traceback.format_exc(limit=3)
    return results, exc, time.perf_counter() - start


def judge(adapter: AdapterContract, case: Case, device: str) -> Verdict:
    """Run one cell and classify it. Never raises for framework behaviour."""
    base = dict(case=case.id, family=case.family, adapter=adapter.name, device=device)
    reason = cannot_express(adapter, case, device)
    if reason:
        return Verdict(**base, status="unsupported", detail=reason)
    applicable = applicable_deviations(adapter, case, device)
    try:
        results, exc, seconds = _run(adapter, case, device)
    except Unsupported as unsupported:
        return Verdict(**base, status="unsupported", detail=str(unsupported))
    mismatches, compared, observed = [], [], []
    try:
        if applicable:
            status, detail, observed = verify(case, applicable, results, exc)
            if status == "deviation" and results is not None:  # the numbers behind the finding
                found, compared = compare_case(case, results)
                mismatches = [m.to_json() for m in found[:8]]
        elif exc is not None:
            status, detail = "error", _exception_line(exc)
        else:
            status, detail, mismatches, compared = _plain(case, results)
    except ValueError as bad_results:  # wrong number of steps, missing y: the adapter's bug
        status, detail = "error", f"adapter returned bad results: {bad_results}"
    kinds = sorted({d.kind for d in observed}, key=DEVIATION_KINDS.index)
    return Verdict(**base, status=status, detail=detail, deviations=[d.name for d in observed], kinds=kinds,
                   mismatches=mismatches, compared=compared, seconds=seconds)
