"""Checking a results document read from disk before anything renders, merges or diffs it.

``bnconform report``, ``diff`` and ``port`` read results.json files that may come from another
machine, another version or a disk that filled up. A file larger than MAX_RESULTS_BYTES is refused
before it is read (today's whole matrix is ~9 MB); a parsed document must have the shape
:func:`bnconform.reporting.results.build` writes -- every field the pages read, with its JSON type
-- or :func:`check_document` names the first field that does not:
``verdicts[12].status: Expected: one of pass, fail, ... Received: 'passs'``.

A shape is a kind (TEXT, NUMBER, ...), a list or a map of a shape, an optional shape (null
allowed), a closed set of strings, or an object: a dict of field -> shape, whose fields may be
absent (older writers leave some out) unless listed in REQUIRED; unknown fields are allowed,
except in a verdict, which is read back into a :class:`~bnconform.judging.verdict.Verdict`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..judging.verdict import DEVIATION_KINDS, MODES, STATUSES

MAX_RESULTS_BYTES = 256 * 2**20


@dataclass(frozen=True)
class _ListOf:
    item: object


@dataclass(frozen=True)
class _MapOf:
    value: object


@dataclass(frozen=True)
class _Optional:
    shape: object


TEXT, INT, NUMBER, BOOL, NUMBER_OR_TEXT, ANY = "a string", "an integer", "a finite number", "true or false", \
    "a number or a string", "any JSON value"
TEXTS = _ListOf(TEXT)
MISMATCH = {"step": INT, "output": TEXT, "index": _ListOf(INT), "expected": NUMBER_OR_TEXT, "got": NUMBER_OR_TEXT,
            "max_abs_error": NUMBER_OR_TEXT, "max_rel_error": NUMBER_OR_TEXT, "ulps": NUMBER_OR_TEXT, "reason": TEXT}
VERDICT = {"case": TEXT, "family": TEXT, "adapter": TEXT, "device": TEXT, "status": frozenset(STATUSES),
           "detail": TEXT, "deviations": TEXTS, "kinds": _ListOf(frozenset(DEVIATION_KINDS)),
           "mismatches": _ListOf(MISMATCH), "compared": TEXTS, "seconds": NUMBER, "version": TEXT,
           "unobserved": TEXTS}
DEVIATION = {"name": TEXT, "kind": frozenset(DEVIATION_KINDS), "applies_to": TEXT, "behaviour": TEXT,
             "explanation": TEXT, "link": TEXT, "effect": {"raises": TEXT, "outputs": TEXTS, "variant": TEXT}}
ADAPTER = {"framework": TEXT, "extra": TEXT, "notes": TEXT, "device_kinds": TEXTS, "doc": TEXT,
           "capabilities": _MapOf(TEXT), "decay_parameter": _Optional(TEXTS),
           "mode": frozenset(MODES), "eager_row": TEXT, "deviations": _ListOf(DEVIATION),
           "version": TEXT, "devices": TEXTS, "defaults": _MapOf(_Optional(NUMBER)), "unavailable": _Optional(TEXT),
           "coverage": {"judged": INT, "behaviours": INT, "never_observed": TEXTS}}
CASE_META = {"input_dtype": TEXT, "param_dtype": TEXT, "rank": INT, "epsilon": NUMBER, "epsilon_mode": TEXT,
             "rule": TEXT, "decay": _Optional(NUMBER), "variance": TEXT, "zero_debias": BOOL, "schedule": BOOL,
             "extensions": TEXTS, "training_n": _ListOf(INT), "update_n": _ListOf(INT), "step_kinds": TEXTS,
             "depends_on": TEXTS, "mean_to_spread": NUMBER, "gradients": TEXTS, "replica_splits": TEXTS}
RUN = {"date": TEXT, "platform": TEXT, "machine": TEXT, "python": TEXT, "bnconform": TEXT, "selection": _MapOf(ANY)}
DOCUMENT = {"runs": _ListOf(RUN), "adapters": _MapOf(ADAPTER), "cases": _MapOf(TEXT), "case_meta": _MapOf(CASE_META),
            "verdicts": _ListOf(VERDICT)}
REQUIRED = {id(DOCUMENT): ("runs", "adapters", "verdicts"), id(VERDICT): ("case", "family", "adapter", "device", "status")}
CLOSED = {id(VERDICT)}  # objects whose unknown fields are an error


def check_document(document) -> str | None:
    """The first field of a parsed results document that does not have its shape, as
    "<field>: Expected: ... Received: ...", or None when the document is well formed."""
    if not isinstance(document, dict):
        return f"the document: Expected: a results document (a JSON object). Received: {_kind(document)}"
    return _check(document, DOCUMENT, "")


def _check(value, shape, where: str) -> str | None:
    if isinstance(shape, dict):
        return _check_object(value, shape, where)
    if isinstance(shape, _Optional):
        return None if value is None else _check(value, shape.shape, where)
    if isinstance(shape, (_ListOf, _MapOf)):
        return _check_container(value, shape, where)
    if isinstance(shape, frozenset):
        return None if value in shape else _problem(where, f"one of {', '.join(sorted(shape))}", repr(value)[:60])
    return None if _is(value, shape) else _problem(where, shape, _kind(value) + _sample(value))


def _check_object(value, shape: dict, where: str) -> str | None:
    if not isinstance(value, dict):
        return _problem(where, "a JSON object", _kind(value))
    for key in REQUIRED.get(id(shape), ()):
        if key not in value:
            return _problem(f"{where}.{key}".lstrip("."), "present", "absent")
    if id(shape) in CLOSED and not set(value) <= set(shape):
        return _problem(where, f"only the fields {', '.join(shape)}", sorted(set(value) - set(shape)))
    for key, field_shape in shape.items():
        if key in value:
            problem = _check(value[key], field_shape, f"{where}.{key}".lstrip("."))
            if problem:
                return problem
    return None


def _check_container(value, shape, where: str) -> str | None:
    is_list = isinstance(shape, _ListOf)
    if not isinstance(value, list if is_list else dict):
        return _problem(where, "a JSON array" if is_list else "a JSON object", _kind(value))
    items = enumerate(value) if is_list else value.items()
    inner = shape.item if is_list else shape.value
    for key, item in items:
        problem = _check(item, inner, f"{where}[{key!r}]" if not is_list else f"{where}[{key}]")
        if problem:
            return problem
    return None


def _is(value, kind: str) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return {TEXT: isinstance(value, str), INT: isinstance(value, int) and not isinstance(value, bool),
            NUMBER: number and math.isfinite(value), BOOL: isinstance(value, bool),
            NUMBER_OR_TEXT: number or isinstance(value, str), ANY: True}[kind]


def _problem(where: str, expected, received) -> str:
    return f"{where or 'the document'}: Expected: {expected}. Received: {received}"


def _kind(value) -> str:
    return "null" if value is None else {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__)


def _sample(value) -> str:
    return f" {value!r:.40}" if isinstance(value, (str, int, float)) else ""

