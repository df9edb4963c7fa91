"""A compiled yes/no check of the case schema: the fast path of loading a valid case file.

jsonschema's full walk (needed to *explain* an error) costs ~10 ms on a typical case file, most
of it per-item bookkeeping over the hex arrays. :func:`compile_schema` turns the schema once into
nested closures that only answer "valid?", with the item loops of arrays of plain strings or
numbers run by ``all(map(...))``. The answer is sound by construction: it accepts only what
jsonschema accepts (it is stricter where convenient, e.g. ``1.0`` for an integer), so a "no"
merely sends the caller to the full walk, which then either names the error or finds none.

Only the keywords the case schema uses are compiled; any other keyword raises
:class:`UnsupportedKeyword` at compile time, so a schema change can never be skipped silently.
"""

from __future__ import annotations

import re
from typing import Any, Callable

Check = Callable[[Any], bool]
ANNOTATIONS = {"$schema", "$id", "$defs", "$comment", "title", "description"}
# Exact types (type() is, not isinstance): bool is not a number, str subclasses are not strings.
_TYPES: dict[str, Check] = {
    "object": lambda v: type(v) is dict,
    "array": lambda v: type(v) is list,
    "string": lambda v: type(v) is str,
    "integer": lambda v: type(v) is int,
    "number": lambda v: type(v) is int or type(v) is float,
    "boolean": lambda v: type(v) is bool,
    "null": lambda v: v is None,
}
_NUMERIC = (int, float)
_OBJECT_KEYWORDS = {"properties", "additionalProperties", "required"}  # compiled together


class UnsupportedKeyword(ValueError):
    """The schema uses a keyword this compiler does not implement."""


# The exact Python types (after json.load) each JSON type admits; "integer" is stricter than
# jsonschema (no 1.0), which only sends such a file to the full walk.
_PYTHON_TYPES = {"string": {str}, "number": {int, float}, "integer": {int}, "boolean": {bool},
                 "null": {type(None)}, "object": {dict}, "array": {list}}


def _as_list(names) -> list:
    return [names] if isinstance(names, str) else list(names)


def _same(a, b) -> bool:
    """JSON equality, strictly: equal values of the same type (True is not 1)."""
    return type(a) is type(b) and a == b


def _enum(values) -> Check:
    """Membership by (type, value) pairs: strict JSON equality in one hash lookup."""
    pairs = {(type(e), e) for e in values}

    def check(v):
        try:
            return (type(v), v) in pairs
        except TypeError:  # an object or array: the case schema enumerates only scalars
            return any(_same(v, e) for e in values)
    return check


def _type_check(names) -> Check:
    tests = [_TYPES[n] for n in ([names] if isinstance(names, str) else names)]
    return tests[0] if len(tests) == 1 else (lambda v: any(t(v) for t in tests))


def _bound(limit, below: bool) -> Check:
    if below:
        return lambda v: type(v) not in _NUMERIC or v <= limit
    return lambda v: type(v) not in _NUMERIC or v >= limit


def _properties(known: dict[str, Check], extra: Check | None, required) -> Check:
    def check(v):
        if type(v) is not dict:
            return True  # "type" says whether an object is required
        if any(key not in v for key in required):
            return False
        for key, value in v.items():
            test = known.get(key, extra)
            if test is not None and not test(value):
                return False
        return True
    return check


class _Compiler:
    def __init__(self, root: dict):
        self.root, self.defs = root, {}

    def ref(self, pointer: str) -> Check:
        if not pointer.startswith("#/$defs/") or pointer.count("/") != 2:
            raise UnsupportedKeyword(f"$ref {pointer!r}")
        name = pointer.rsplit("/", 1)[1]
        if name not in self.defs:
            self.defs[name] = None  # placeholder: a recursive reference resolves lazily
            self.defs[name] = self.compile(self.root["$defs"][name])
        return lambda v: self.defs[name](v)

    def compile(self, schema: dict) -> Check:
        checks = [self.keyword(key, value) for key, value in schema.items() if key not in _OBJECT_KEYWORDS]
        checks = [c for c in checks if c is not None]
        if _OBJECT_KEYWORDS & schema.keys():
            checks.append(self.properties(schema))
        if len(checks) == 1:
            return checks[0]

        def every(v):
            for check in checks:
                if not check(v):
                    return False
            return True
        return every

    def keyword(self, key: str, value) -> Check | None:
        if key in ANNOTATIONS:
            return None
        simple = {
            "type": lambda: _type_check(value),
            "const": lambda: (lambda v: _same(v, value)),
            "enum": lambda: _enum(value),
            "pattern": lambda: self.pattern(value),
            "minLength": lambda: (lambda v: type(v) is not str or len(v) >= value),
            "minimum": lambda: _bound(value, below=False),
            "maximum": lambda: _bound(value, below=True),
            "minItems": lambda: (lambda v: type(v) is not list or len(v) >= value),
            "maxItems": lambda: (lambda v: type(v) is not list or len(v) <= value),
            "items": lambda: self.items(value),
            "$ref": lambda: self.ref(value),
            "oneOf": lambda: self.one_of(value),
            "propertyNames": lambda: self.property_names(value),
        }
        if key not in simple:
            raise UnsupportedKeyword(key)
        return simple[key]()

    @staticmethod
    def pattern(regex: str) -> Check:
        search = re.compile(regex).search  # jsonschema searches (patterns carry their own anchors)
        return lambda v: type(v) is not str or search(v) is not None

    def items(self, item_schema: dict) -> Check:
        keys = set(item_schema) - ANNOTATIONS
        if keys == {"type", "pattern"} and item_schema["type"] == "string":
            search = re.compile(item_schema["pattern"]).search  # hex arrays: the hot loop, in C
            return lambda v: type(v) is not list or (set(map(type, v)) <= {str} and all(map(search, v)))
        if keys == {"type"}:  # e.g. approx: the type of every item, by one set() in C
            allowed = set().union(*(_PYTHON_TYPES[n] for n in _as_list(item_schema["type"])))
            return lambda v: type(v) is not list or set(map(type, v)) <= allowed
        test = self.compile(item_schema)
        return lambda v: type(v) is not list or all(map(test, v))

    def one_of(self, options) -> Check:
        tests = [self.compile(o) for o in options]
        return lambda v: sum(1 for t in tests if t(v)) == 1

    def properties(self, schema: dict) -> Check:
        known = {k: self.compile(s) for k, s in schema.get("properties", {}).items()}
        extra = schema.get("additionalProperties", True)
        extra_check = (lambda v: False) if extra is False else None if extra is True else self.compile(extra)
        return _properties(known, extra_check, tuple(schema.get("required", ())))

    def property_names(self, schema: dict) -> Check:
        test = self.compile(schema)
        return lambda v: type(v) is not dict or all(map(test, v))


def compile_schema(schema: dict) -> Check:
    """``check(instance) -> bool``: True only if ``instance`` is valid under ``schema``."""
    return _Compiler(schema).compile(schema)
