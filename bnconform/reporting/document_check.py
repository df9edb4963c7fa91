"""Checking a results document read from disk before anything renders, merges or diffs it.

``bnconform report``, ``diff`` and ``port`` read results.json files that may come from another
machine, another version or a disk that filled up. A file larger than MAX_RESULTS_BYTES is refused
before it is read (today's whole matrix is ~9 MB); a parsed document must have the shape
:func:`bnconform.reporting.results.build` writes, down to each verdict's fields and their types,
or :func:`check_document` names the first field that is not: ``verdicts[12].status: Expected: one
of pass, fail, ... Received: 'passs'``.
"""

from __future__ import annotations

import math
from dataclasses import fields

from ..judging.verdict import DEVIATION_KINDS, STATUSES, Verdict

MAX_RESULTS_BYTES = 256 * 2**20
TOP_LEVEL = {"runs": list, "adapters": dict, "verdicts": list}  # required; cases and case_meta are optional dicts
VERDICT_TEXT = ("case", "family", "adapter", "device", "detail", "version")
VERDICT_LISTS = {"deviations": str, "kinds": str, "mismatches": dict, "compared": str}


def _kind(value) -> str:
    return "null" if value is None else type(value).__name__


def check_document(document) -> str | None:
    """The first field of a parsed results document that does not have the expected shape, as
    "<field>: Expected: ... Received: ...", or None when the document is well formed."""
    if not isinstance(document, dict):
        return f"the document: Expected: a results document (a JSON object). Received: {_kind(document)}"
    for key, kind in TOP_LEVEL.items():
        if not isinstance(document.get(key), kind):
            return f"{key}: Expected: a JSON {'array' if kind is list else 'object'}. Received: {_kind(document.get(key))}"
    for key in ("cases", "case_meta"):
        if not isinstance(document.get(key, {}), dict):
            return f"{key}: Expected: a JSON object. Received: {_kind(document[key])}"
    for name, meta in document["adapters"].items():
        if not isinstance(meta, dict):
            return f"adapters[{name!r}]: Expected: a JSON object. Received: {_kind(meta)}"
    for index, run in enumerate(document["runs"]):
        if not isinstance(run, dict):
            return f"runs[{index}]: Expected: a JSON object. Received: {_kind(run)}"
    for index, verdict in enumerate(document["verdicts"]):
        problem = _check_verdict(verdict)
        if problem:
            return f"verdicts[{index}]{problem}"
    return None


def _check_verdict(verdict) -> str | None:
    """".<field>: Expected: ... Received: ..." for the first malformed field of one verdict."""
    if not isinstance(verdict, dict):
        return f": Expected: a JSON object. Received: {_kind(verdict)}"
    unknown = set(verdict) - {f.name for f in fields(Verdict)}
    if unknown:
        return f": Expected: only the fields of a verdict. Received: {sorted(unknown)}"
    for key in ("case", "family", "adapter", "device", "status"):
        if key not in verdict:
            return f".{key}: Expected: a string. Received: nothing"
    for key in VERDICT_TEXT:
        if not isinstance(verdict.get(key, ""), str):
            return f".{key}: Expected: a string. Received: {_kind(verdict[key])}"
    if verdict["status"] not in STATUSES:
        return f".status: Expected: one of {', '.join(STATUSES)}. Received: {verdict['status']!r}"
    for key, kind in VERDICT_LISTS.items():
        value = verdict.get(key, [])
        if not isinstance(value, list) or not all(isinstance(item, kind) for item in value):
            return f".{key}: Expected: a list of {kind.__name__}. Received: {value!r:.60}"
    if not set(verdict.get("kinds", [])) <= set(DEVIATION_KINDS):
        return f".kinds: Expected: among {', '.join(DEVIATION_KINDS)}. Received: {verdict['kinds']}"
    seconds = verdict.get("seconds", 0.0)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return f".seconds: Expected: a finite number. Received: {seconds!r:.60}"
    return None
