"""Judging one cell (case x adapter x device) into exactly one :class:`~.verdict.Verdict`.

Order: the adapter's declared capabilities (and its residual ``supports``) may make the cell
*unsupported*; otherwise the adapter runs and its results are compared with the oracle's. An API
that keeps no running state (``keeps_state = False``) runs each step from the state the case
expects before it and is judged on everything but the running statistics, which the verdict
lists as ``unobserved`` (bnconform.judging.stepwise).

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
from .stepwise import not_resumable, observed_results, settle, step_cases, unobserved_outputs, unsupported_step
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


def applicable_deviations(adapter: AdapterContract, case: Case, device: str, skipped=(), ones=None) -> list[Deviation]:
    """Every declared deviation whose selector matches this cell; judged step by step (``ones``:
    its one-step cases), whose selector matches one of the one-step cases it runs (what it was
    given and observed; ``skipped``: the steps it cannot run)."""
    declared = deviations_in_version(adapter)
    if ones is None:
        return [d for d in declared if d.applies(case, device)]
    found = []
    for index, one in enumerate(ones):
        found += [d for d in declared if index not in skipped and d.applies(one, device) and d not in found]
    return found


def _framework_version(adapter) -> str:
    """The version the adapter reports ("" when it cannot say: every declaration then holds)."""
    try:
        return adapter.framework_version()
    except Exception:  # noqa: BLE001 (a test double or an adapter without a distribution)
        return ""


def deviations_in_version(adapter: AdapterContract) -> tuple:
    """The adapter's declared deviations that hold in the framework version it runs (Deviation.versions),
    read once per adapter instance."""
    cached = getattr(adapter, "_deviations_in_version", None)
    if cached is None:
        version = _framework_version(adapter) if any(d.versions for d in adapter.deviations) else ""
        cached = tuple(d for d in adapter.deviations if d.holds_in(version))
        try:
            adapter._deviations_in_version = cached
        except AttributeError:  # a frozen or slotted test double: ask again next time
            pass
    return cached


def keeps_state(adapter) -> bool:
    """False for an API judged step by step from the expected state (bnconform.judging.stepwise)."""
    return getattr(adapter, "keeps_state", True)


def declared_reason(capabilities, stateful: bool, case: Case, device: str, api: str) -> str | None:
    """Why the declaration cannot express ``case``: of the case itself, or for an API that keeps no
    state, of the first step that its one-step case cannot express."""
    if stateful:
        return unsupported_reason(capabilities, case, device, api)
    return unsupported_step(lambda one: unsupported_reason(capabilities, one, device, api), case)


def _one_step_reason(adapter: AdapterContract, device: str):
    return lambda one: unsupported_reason(adapter.capabilities, one, device, adapter.name) or adapter.supports(one, device)


def cannot_express(adapter: AdapterContract, case: Case, device: str) -> str | None:
    """The unsupported reason from the declared capabilities, then the adapter's own limits (for an
    API that keeps no state: only when none of the steps can run)."""
    if keeps_state(adapter):
        return unsupported_reason(adapter.capabilities, case, device, adapter.name) or adapter.supports(case, device)
    return unsupported_step(_one_step_reason(adapter, device), case)


def _expressible(adapter: AdapterContract, case: Case, device: str, ones=None) -> tuple[str | None, list[int]]:
    """(the cell's unsupported reason or None, the steps left out): judged step by step (``ones``:
    its one-step cases), the steps it cannot express (or, keeping their update, cannot start from
    the canonical state) are left out; unsupported only when that is all of them."""
    if ones is None:
        return cannot_express(adapter, case, device), []
    reason_of = _one_step_reason(adapter, device)
    if keeps_state(adapter):
        whole = cannot_express(adapter, case, device)
        if whole:
            return whole, []
        return settle([reason_of(one) or not_resumable(one) for one in ones])
    return settle([reason_of(one) for one in ones])


def _run(adapter: AdapterContract, case: Case, device: str, skipped=(), ones=None):
    """(results, exception, seconds); Unsupported propagates. Judged step by step (``ones``), each
    step it can express (all but ``skipped``) runs as its own case from the expected state (None
    for the others); an API that keeps no state reports no state outputs."""
    start, results, exc = time.perf_counter(), None, None
    try:
        if ones is None:
            results = adapter.run(case, device)
        else:
            ran = [None if i in skipped else adapter.run(one, device)[0] for i, one in enumerate(ones)]
            results = ran if keeps_state(adapter) else observed_results(ran)
    except Unsupported:
        raise
    except Exception as caught:  # the framework's own exception is data, not a crash
        exc = caught
        exc.__bnconform_trace__ = traceback.format_exc(limit=3)
    return results, exc, time.perf_counter() - start


def judge(adapter: AdapterContract, case: Case, device: str, stepwise: bool = False) -> Verdict:
    """Run one cell and classify it. Never raises for framework behaviour. ``stepwise``: run a
    stateful API's steps each from the state the case expects before it, so a failure names the
    first step that diverges rather than every later one (an API without state always runs so)."""
    base = dict(case=case.id, family=case.family, adapter=adapter.name, device=device)
    # the one-step cases, built once for the whole cell (None: the case runs end to end)
    ones = step_cases(case, keep_update=keeps_state(adapter)) if stepwise or not keeps_state(adapter) else None
    reason, skipped = _expressible(adapter, case, device, ones)
    if reason:
        return Verdict(**base, status="unsupported", detail=reason)
    applicable = applicable_deviations(adapter, case, device, skipped, ones)
    try:
        results, exc, seconds = _run(adapter, case, device, skipped, ones)
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
    unobserved = (unobserved_outputs(case, skipped) if not keeps_state(adapter)
                  else [f"step {i}" for i in skipped] if stepwise else [])
    if unobserved and status in ("pass", "deviation", "fail"):
        why = "an API without running state" if not keeps_state(adapter) else "run with --stepwise"
        note = f"not observed: {', '.join(unobserved)} ({why}; each step ran from the expected state)"
        detail = f"{detail} | {note}" if detail else note
    return Verdict(**base, status=status, detail=detail, deviations=[d.name for d in observed], kinds=kinds,
                   mismatches=mismatches, compared=compared, seconds=seconds, unobserved=unobserved)
