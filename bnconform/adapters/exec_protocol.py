"""The messages of the language-neutral backend protocol (docs/protocol.md), as data <-> objects.

A backend executable writes a *handshake* (one JSON object) and then answers one *request* per
case. This module turns the handshake's capabilities and deviations into the same
:class:`~bnconform.judging.capabilities.Capabilities`, :class:`~bnconform.judging.selectors.Selector` and
:class:`~bnconform.judging.declarations.Deviation` objects a Python adapter declares, so the judge
verifies an executable's declarations exactly as it verifies a Python adapter's; and it decodes
answers (hex-float arrays, as in case files) into the per-step dicts ``Adapter.run`` returns.
Every malformed message raises :class:`ProtocolError` naming where it is and what was expected.
Nothing here starts a process (bnconform.adapters.exec_backend does).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..caseformat.dtypes import numpy_dtype
from ..caseformat.encoding import EncodingError, decode_array
from ..caseformat.model import (EPSILON_MODES, EXTENSIONS, GHOST_SPLITS, NORMALIZE_WITH, RUNNING_RULES, VARIANCE_KINDS,
                                Config, RunningStats)
from ..judging import selectors as sel
from ..judging.capabilities import (CHANNEL_POSITIONS, FLOAT_DTYPES, REPLICA_SPLITS, STEP_KINDS, Capabilities,
                                    channel_positions_of)
from ..judging.compare import COMPARED_KEYS
from ..judging.verdict import DEVIATION_KINDS
from .base import Deviation, MatchesVariant, Mismatches, Raises, variant

PROTOCOL_VERSION = 1
COUNT_OUTPUTS = ("num_updates", "replicas")  # integers; every other output is an encoded array


class ProtocolError(ValueError):
    """A backend's message breaks the protocol; str() is one line with Expected/Received."""


def _fail(where: str, expected: str, received) -> ProtocolError:
    shown = repr(received)
    return ProtocolError(f"{where}: Expected: {expected}. Received: {shown[:120]}{'...' if len(shown) > 120 else ''}")


def _require(obj, kind, where: str, expected: str):
    if not isinstance(obj, kind) or isinstance(obj, bool) and kind is not bool:
        raise _fail(where, expected, obj)
    return obj


# --- Selectors ----------------------------------------------------------------------------------

def channel_position_in(*positions: str) -> sel.Selector:
    """The case's channel axis is at one of ``positions`` (first = axis 1, last, other)."""
    words = {"first": "axis 1", "last": "the last axis", "other": "an axis neither 1 nor last"}
    text = "channels on " + " or ".join(words.get(p, p) for p in positions)
    return sel.Selector(text, lambda case, device: bool(channel_positions_of(case) & set(positions)))


@sel.where("a non-empty input whose channel axis is not its innermost one (C > 1 and an axis of size > 1 follows it)")
def channels_not_innermost(case) -> bool:
    """Where a kernel that walks per-channel parameters cyclically over the flat (row-major)
    input, as if channels were last, picks the wrong channel for some element."""
    axis = case.config.channel_axis
    return case.channels > 1 and any(s.x.size > 0 and int(np.prod(s.x.shape[axis + 1:])) > 1 for s in case.steps)


# name -> (factory, (min args, max args)): the shared predicates of bnconform.judging.selectors, plus the two
# layout predicates above.
SELECTORS = {
    "every_case": (lambda: sel.ANY, (0, 0)),
    "training_step": (sel.training_step, (0, 2)),
    "updates_on_empty_batch": (lambda: sel.updates_on_empty_batch, (0, 0)),
    "updates_running_stats": (lambda: sel.updates_running_stats, (0, 0)),
    "updates_infinite_running_mean": (lambda: sel.updates_infinite_running_mean, (0, 0)),
    "updates_in_inference": (lambda: sel.updates_in_inference, (0, 0)),
    "training_without_update": (lambda: sel.training_without_update, (0, 0)),
    "has_gradient_step": (lambda: sel.has_gradient_step, (0, 0)),
    "resumes_from_count": (lambda: sel.resumes_from_count, (0, 0)),
    "epsilon_zero": (lambda: sel.epsilon_zero, (0, 0)),
    "affine_partly_off": (lambda: sel.affine_partly_off, (0, 0)),
    "input_dtype_in": (sel.input_dtype_in, (1, 4)),
    "param_dtype_in": (sel.param_dtype_in, (1, 4)),
    "device_in": (sel.device_in, (1, 8)),
    "rank_in": (sel.rank_in, (1, 4)),
    "channel_position_in": (channel_position_in, (1, 3)),
    "channels_not_innermost": (lambda: channels_not_innermost, (0, 0)),
    "running_variance_is": (sel.running_variance_is, (1, 1)),
    "uses_extension": (sel.uses_extension, (1, 1)),
    "squares_overflow": (sel.squares_overflow, (0, 1)),
    "mean_far_from_spread": (sel.mean_far_from_spread, (1, 2)),
}


def selector_from_json(obj, where: str) -> sel.Selector:
    """``{"selector": NAME, "args": [...]}``, ``{"cases": [ids]}``, ``{"all": [..]}``,
    ``{"any": [..]}`` or ``{"not": S}`` -> a Selector whose text the report shows."""
    _require(obj, dict, where, "a selector object")
    keys = set(obj)
    if keys == {"cases"}:
        ids = _require(obj["cases"], list, f"{where}/cases", "a non-empty list of case ids")
        if not ids or not all(isinstance(i, str) for i in ids):
            raise _fail(f"{where}/cases", "a non-empty list of case ids", ids)
        return sel.case_in(*ids)
    if keys in ({"all"}, {"any"}):
        (key,) = keys
        parts = _require(obj[key], list, f"{where}/{key}", "a non-empty list of selectors")
        found = [selector_from_json(p, f"{where}/{key}/{i}") for i, p in enumerate(parts)]
        if not found:
            raise _fail(f"{where}/{key}", "a non-empty list of selectors", parts)
        combined = found[0]
        for other in found[1:]:
            combined = combined & other if key == "all" else combined | other
        return combined
    if keys == {"not"}:
        return ~selector_from_json(obj["not"], f"{where}/not")
    if "selector" in keys and keys <= {"selector", "args"}:
        return _named_selector(obj["selector"], obj.get("args", []), where)
    raise _fail(where, 'one of {"selector", "args"}, {"cases"}, {"all"}, {"any"}, {"not"}', obj)


def _named_selector(name, args, where: str) -> sel.Selector:
    if name not in SELECTORS:
        raise _fail(f"{where}/selector", f"one of {', '.join(SELECTORS)}", name)
    factory, (low, high) = SELECTORS[name]
    _require(args, list, f"{where}/args", "a list")
    if not low <= len(args) <= high:
        raise _fail(f"{where}/args", f"{low} to {high} arguments for {name}", args)
    try:
        return factory(*args)
    except (TypeError, ValueError) as exc:  # e.g. squares_overflow("float8")
        raise _fail(f"{where}/args", f"arguments {name} accepts ({exc})", args) from None


# --- Capabilities -------------------------------------------------------------------------------

_RANKS = (2, 3, 4, 5)
# field -> allowed values, for the fields that are sets of scalars
_SET_FIELDS = {
    "epsilon_modes": EPSILON_MODES, "running_variance": VARIANCE_KINDS, "zero_debias": (False, True),
    "num_updates_schedule": (False, True), "running_rules": RUNNING_RULES, "ranks": _RANKS,
    "channel_positions": CHANNEL_POSITIONS, "extensions": EXTENSIONS, "ghost_splits": GHOST_SPLITS,
    "gradients": NORMALIZE_WITH, "replica_counts": tuple(range(1, 65)), "replica_splits": REPLICA_SPLITS,
}
_PAIR_FIELDS = {"step_kinds": STEP_KINDS, "dtypes": tuple((i, p) for i in FLOAT_DTYPES for p in FLOAT_DTYPES)}
_BOOL_FIELDS = ("separate_scale_center", "resumes_counter", "unreplicated")


def _field_value(name: str, value, where: str):
    if name in _BOOL_FIELDS:
        return _require(value, bool, where, "true or false")
    _require(value, list, where, "a list")
    if name in _PAIR_FIELDS:
        pairs = [tuple(v) if isinstance(v, list) else v for v in value]
        bad = [v for v in pairs if v not in _PAIR_FIELDS[name]]
        expected = "[normalize_with, update] pairs such as [\"batch\", true]" if name == "step_kinds" else \
            "[input_dtype, param_dtype] pairs of " + ", ".join(FLOAT_DTYPES)
        if bad:
            raise _fail(where, expected, bad[0])
        return frozenset(pairs)
    allowed = _SET_FIELDS[name]
    bad = [v for v in value if v not in allowed or isinstance(v, bool) != isinstance(allowed[0], bool)]
    if bad:
        raise _fail(where, f"values among {list(allowed) if len(allowed) < 10 else 'integers 1..64'}", bad[0])
    return frozenset(value)


def capabilities_from_json(obj, where: str = "/capabilities") -> Capabilities:
    """The handshake's capabilities: each field of Capabilities by name (omitted = its default)."""
    _require(obj, dict, where, "an object of Capabilities fields")
    known = [f.name for f in dataclasses.fields(Capabilities)]
    values = {}
    for name, value in obj.items():
        if name not in known:
            raise _fail(f"{where}/{name}", f"a Capabilities field ({', '.join(known)})", name)
        values[name] = _when_from_json(value, f"{where}/when") if name == "when" else \
            _field_value(name, value, f"{where}/{name}")
    return Capabilities(**values)


def _when_from_json(value, where: str) -> tuple:
    """``[{"applies": SELECTOR, "set": {field: values}}, ...]`` -> ((Selector, {field: values}), ...)."""
    _require(value, list, where, "a list of {applies, set} objects")
    overridable = (*_SET_FIELDS, *_PAIR_FIELDS, *_BOOL_FIELDS)
    found = []
    for i, item in enumerate(value):
        here = f"{where}/{i}"
        if not isinstance(item, dict) or set(item) != {"applies", "set"}:
            raise _fail(here, "an object with exactly applies and set", item)
        changes = _require(item["set"], dict, f"{here}/set", "an object of Capabilities fields")
        for name in changes:
            if name not in overridable:
                raise _fail(f"{here}/set/{name}", "a Capabilities field other than when", name)
        fields = {k: _field_value(k, v, f"{here}/set/{k}") for k, v in changes.items()}
        found.append((selector_from_json(item["applies"], f"{here}/applies"), fields))
    return tuple(found)


# --- Deviations ---------------------------------------------------------------------------------

_CONFIG_KNOBS = tuple(f.name for f in dataclasses.fields(Config) if f.name not in ("running_stats", "renorm"))
_RUNNING_KNOBS = tuple(f.name for f in dataclasses.fields(RunningStats))


def _knob(spec, where: str):
    """A literal knob value, or ``{"rounded_to": DTYPE}``: the case's own value rounded to that
    dtype. Returns current value -> new value."""
    if not isinstance(spec, dict):
        return lambda current: spec
    if set(spec) != {"rounded_to"} or spec["rounded_to"] not in FLOAT_DTYPES:
        raise _fail(where, f'a literal or {{"rounded_to": one of {", ".join(FLOAT_DTYPES)}}}', spec)
    dtype = numpy_dtype(spec["rounded_to"])
    return lambda current: None if current is None else float(np.asarray(current, dtype=dtype))


def _variant_from_json(spec, where: str):
    """``{"epsilon": ..., "running_stats": {"decay": ...}}`` -> case -> the variant case."""
    _require(spec, dict, where, "an object of config knobs")
    running = _require(spec.get("running_stats", {}), dict, f"{where}/running_stats", "an object of running-stats knobs")
    for name in spec:
        if name != "running_stats" and name not in _CONFIG_KNOBS:
            raise _fail(f"{where}/{name}", f"a config knob ({', '.join(_CONFIG_KNOBS)}) or running_stats", name)
    for name in running:
        if name not in _RUNNING_KNOBS:
            raise _fail(f"{where}/running_stats/{name}", f"one of {', '.join(_RUNNING_KNOBS)}", name)
    config_knobs = {k: _knob(v, f"{where}/{k}") for k, v in spec.items() if k != "running_stats"}
    running_knobs = {k: _knob(v, f"{where}/running_stats/{k}") for k, v in running.items()}

    def apply(case):
        cfg = case.config
        stats = {k: f(getattr(cfg.running_stats, k)) for k, f in running_knobs.items()}
        return variant(case, running_stats=stats or None, **{k: f(getattr(cfg, k)) for k, f in config_knobs.items()})
    return apply


def behaviour_from_json(obj, where: str):
    """``{"raises": TYPE, "match": REGEX}``, ``{"mismatches": [outputs], "text": ...}`` or
    ``{"variant": {knobs}, "text": ...}`` -> Raises / Mismatches / MatchesVariant."""
    _require(obj, dict, where, "a behaviour object")
    text = obj.get("text", "")
    _require(text, str, f"{where}/text", "a string")
    if "raises" in obj and set(obj) <= {"raises", "match"}:
        return Raises(_require(obj["raises"], str, f"{where}/raises", "an exception type name"),
                      _require(obj.get("match", ""), str, f"{where}/match", "a regular expression"))
    if "mismatches" in obj and set(obj) <= {"mismatches", "text"}:
        outputs = _require(obj["mismatches"], list, f"{where}/mismatches", "a list of output names")
        bad = [o for o in outputs if o not in COMPARED_KEYS + ("num_updates",)]
        if bad or not outputs:
            raise _fail(f"{where}/mismatches", f"output names among {', '.join(COMPARED_KEYS)}, num_updates", outputs)
        return Mismatches(tuple(outputs), text)
    if "variant" in obj and set(obj) <= {"variant", "text"}:
        if not text:
            raise _fail(f"{where}/text", "a sentence saying what the variant is", text)
        return MatchesVariant(text, _variant_from_json(obj["variant"], f"{where}/variant"))
    raise _fail(where, 'one of {"raises", "match"}, {"mismatches", "text"}, {"variant", "text"}', obj)


def deviation_from_json(obj, where: str) -> Deviation:
    _require(obj, dict, where, "a deviation object")
    fields = ("name", "kind", "applies", "behaviour", "explanation", "link")
    if set(obj) != set(fields):
        raise _fail(where, f"exactly the fields {', '.join(fields)}", sorted(obj))
    for name in ("name", "explanation", "link"):
        _require(obj[name], str, f"{where}/{name}", "a string")
    if obj["kind"] not in DEVIATION_KINDS:
        raise _fail(f"{where}/kind", f"one of {', '.join(DEVIATION_KINDS)}", obj["kind"])
    return Deviation(name=obj["name"], kind=obj["kind"], applies=selector_from_json(obj["applies"], f"{where}/applies"),
                     behaviour=behaviour_from_json(obj["behaviour"], f"{where}/behaviour"),
                     explanation=obj["explanation"], link=obj["link"])


# --- Handshake ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Handshake:
    """What a backend says about itself before the first case (docs/protocol.md, "Handshake")."""

    name: str
    version: str
    devices: tuple[str, ...]
    capabilities: Capabilities
    deviations: tuple[Deviation, ...]
    notes: str = ""
    decay_parameter: tuple[str, str] | None = None
    defaults: dict = dataclasses.field(default_factory=dict)
    unavailable: str | None = None
    keeps_state: bool = True  # false: judged step by step from the expected state (bnconform.judging.stepwise)


_HANDSHAKE_FIELDS = ("protocol", "name", "version", "devices", "capabilities", "deviations", "notes",
                     "decay_parameter", "defaults", "unavailable", "keeps_state")


def parse_handshake(obj, expected_name: str) -> Handshake:
    """Check and convert the first line a backend writes; raises ProtocolError."""
    _require(obj, dict, "handshake", "a JSON object")
    if obj.get("protocol") != PROTOCOL_VERSION:
        raise _fail("handshake/protocol", f"{PROTOCOL_VERSION} (the protocol version this bnconform speaks)",
                    obj.get("protocol"))
    unknown = sorted(set(obj) - set(_HANDSHAKE_FIELDS))
    if unknown:
        raise _fail("handshake", f"fields among {', '.join(_HANDSHAKE_FIELDS)}", unknown[0])
    if obj.get("name") != expected_name:
        raise _fail("handshake/name", f"{expected_name!r} (the name in bnconform-backend.json)", obj.get("name"))
    if obj.get("unavailable") is not None:
        reason = _require(obj["unavailable"], str, "handshake/unavailable", "a string saying why")
        return Handshake(expected_name, str(obj.get("version", "?")), (), Capabilities(), (), unavailable=reason)
    devices = _require(obj.get("devices"), list, "handshake/devices", "a non-empty list of device kinds like \"cpu\"")
    if not devices or not all(isinstance(d, str) for d in devices):
        raise _fail("handshake/devices", "a non-empty list of device kinds like \"cpu\"", devices)
    deviations = _require(obj.get("deviations", []), list, "handshake/deviations", "a list")
    decay = obj.get("decay_parameter")
    if decay is not None and not (isinstance(decay, list) and len(decay) == 2 and decay[1] in ("new", "old")):
        raise _fail("handshake/decay_parameter", 'null or [parameter name, "new" or "old"]', decay)
    return Handshake(
        name=expected_name, version=_require(obj.get("version"), str, "handshake/version", "the framework version string"),
        devices=tuple(devices), capabilities=capabilities_from_json(obj.get("capabilities", {}), "handshake/capabilities"),
        deviations=tuple(deviation_from_json(d, f"handshake/deviations/{i}") for i, d in enumerate(deviations)),
        notes=_require(obj.get("notes", ""), str, "handshake/notes", "a string"),
        decay_parameter=tuple(decay) if decay else None,
        defaults=_require(obj.get("defaults", {}), dict, "handshake/defaults", "an object"),
        keeps_state=_require(obj.get("keeps_state", True), bool, "handshake/keeps_state", "true or false"))


# --- Requests and answers -----------------------------------------------------------------------

def request_for(case, device: str, request_id: int) -> dict:
    """One case for the backend: the case file's object without each step's expected values
    and tolerances (a backend computes; it never sees the answers)."""
    from ..caseformat.casefile import case_to_json

    obj = case_to_json(case)
    for step in obj["steps"]:
        step.pop("expected", None)
        step.pop("tolerance", None)
    return {"id": request_id, "device": device, "case": obj}


class BackendRaised(Exception):
    """Base of the exceptions an ``error`` answer becomes; the subclass is named after the
    framework's own exception type so a declared ``Raises`` can match it."""


def answer_to_results(answer, request_id: int, steps: int):
    """An answer -> ("outputs", [per-step dicts]) | ("unsupported", reason) | ("error", exception)."""
    _require(answer, dict, "answer", "a JSON object")
    if answer.get("id") != request_id:
        raise _fail("answer/id", f"{request_id} (the request's id)", answer.get("id"))
    kinds = [k for k in ("outputs", "unsupported", "error") if k in answer]
    if len(kinds) != 1 or set(answer) != {"id", kinds[0]}:
        raise _fail("answer", 'id and exactly one of "outputs", "unsupported", "error"', sorted(answer))
    if kinds == ["unsupported"]:
        return "unsupported", _require(answer["unsupported"], str, "answer/unsupported", "a reason string")
    if kinds == ["error"]:
        error = answer["error"]
        if not isinstance(error, dict) or set(error) != {"type", "message"} or not all(
                isinstance(v, str) for v in error.values()) or not error["type"].isidentifier():
            raise _fail("answer/error", '{"type": an identifier like "RangeError", "message": string}', error)
        return "error", type(error["type"], (BackendRaised,), {})(error["message"])
    outputs = _require(answer["outputs"], list, "answer/outputs", f"a list of {steps} step objects")
    if len(outputs) != steps:
        raise _fail("answer/outputs", f"{steps} step objects (one per step of the case)", f"{len(outputs)} objects")
    return "outputs", [_step_outputs(o, f"answer/outputs/{i}") for i, o in enumerate(outputs)]


def _step_outputs(obj, where: str) -> dict:
    _require(obj, dict, where, "an object of outputs")
    found = {}
    for key, value in obj.items():
        if value is None:
            continue  # not exposed by this API
        if key in COUNT_OUTPUTS:
            found[key] = _require(value, int, f"{where}/{key}", "an integer")
        elif key in COMPARED_KEYS:
            try:
                found[key] = decode_array(value, f"{where}/{key}")
            except EncodingError as exc:
                raise ProtocolError(str(exc)) from None
        else:
            raise _fail(f"{where}/{key}", f"an output among {', '.join(COMPARED_KEYS + COUNT_OUTPUTS)}", key)
    return found
