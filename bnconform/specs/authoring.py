"""Writing cases by hand: ``bnconform new`` (readable description -> case file) and ``bnconform
show`` (case file -> readable description).

The readable form is YAML or JSON with decimal numbers ("nan", "inf", "-inf" as strings)::

    id: published/keras_inference_so47567655
    description: ...
    config: {channel_axis: 1, epsilon: 0.001, input_dtype: float32, param_dtype: float32}
    initial_state: {gamma: [1, 1], beta: [0, 0], running_mean: [0, 0], running_var: [1, 1]}
    steps:
      - {normalize_with: running, update_running_stats: false, x: [[0, 1], [2, 3]],
         expected: {y: [[0.0, 0.99950039], [1.99900079, 2.9985013]]}}

Everything the case format has may be written (config and step fields keep their names); config
knobs left out take the model's defaults, initial-state arrays default to gamma 1, beta 0,
running mean 0, running variance 1. ``--expect oracle`` computes every output with the oracle;
``--expect given`` keeps only the outputs the description states (published numbers). Inputs are
rounded to their dtype (each changed value is reported); tolerances not given are suggested by
bnconform.reference.tolerance, widened for given numbers by half a unit of their last printed digit, and
the reasoning is printed.
"""

from __future__ import annotations

import json
from dataclasses import fields
from decimal import Decimal
from pathlib import Path

import numpy as np

from ..caseformat.bounded_input import MAX_DESCRIPTION_VALUES, InputTooLarge, count_values, load_yaml, read_text
from ..caseformat.casefile import case_to_json, config_from_json, config_to_json, dumps_case
from ..caseformat.dtypes import machine_epsilon, quantize
from ..caseformat.model import GRADIENT_KEYS, OUTPUT_KEYS, RENORM_STATE_KEYS, Case, Config, State, Step
from ..caseformat.validation import CaseError, check_meaning
from ..reference import oracle
from ..reference.tolerance import step_tolerance

_COMPARED = OUTPUT_KEYS + RENORM_STATE_KEYS + GRADIENT_KEYS
_STATE_DEFAULTS = {"gamma": 1.0, "beta": 0.0, "running_mean": 0.0, "running_var": 1.0}


def read_readable(path: Path) -> dict:
    """The description as a dict (YAML for .yaml/.yml, else JSON), within the bounds of
    :mod:`bnconform.caseformat.bounded_input`; CaseError naming the file otherwise."""
    try:
        text = read_text(path)
        if path.suffix in (".yaml", ".yml"):
            obj = load_yaml(text)
        else:
            obj = json.loads(text)
            if count_values(obj) > MAX_DESCRIPTION_VALUES:
                raise InputTooLarge(f"Expected: at most {MAX_DESCRIPTION_VALUES:,} values. Received: more")
    except InputTooLarge as exc:
        raise CaseError(f"{path}: {exc}") from None
    except OSError:
        raise
    except Exception as exc:  # yaml.YAMLError, json.JSONDecodeError, RecursionError: one line either way
        first = (str(exc) or type(exc).__name__).splitlines()[0]
        raise CaseError(f"{path}: Expected: a YAML or JSON description. Received: {first}") from None
    if not isinstance(obj, dict):
        raise CaseError(f"{path}: Expected: a mapping with id, description, config, steps. Received: {type(obj).__name__}")
    return obj


def _numbers(value, where: str) -> np.ndarray:
    """Nested lists of decimals (and "nan"/"inf"/"-inf") as float64."""
    try:
        return np.asarray(_floats(value), dtype=np.float64)
    except (TypeError, ValueError, RecursionError):
        raise CaseError(f"{where}: Expected: numbers (nested lists; 'nan', 'inf', '-inf' as strings). "
                        f"Received: {str(value)[:60]}") from None


def _floats(value):
    if isinstance(value, list):
        return [_floats(v) for v in value]
    if isinstance(value, bool) or value is None:
        raise ValueError(value)
    return float(value)


def _rounded(values: np.ndarray, dtype: str, where: str, notes: list) -> np.ndarray:
    """``values`` rounded to ``dtype``; a note for each value that changed (the first few), its
    numbers as plain Python floats (``0.1``, never NumPy's ``np.float64(0.1)``)."""
    stored = quantize(values, dtype)
    changed = np.argwhere(~((stored.astype(np.float64) == values) | (np.isnan(values) & np.isnan(stored.astype(float)))))
    for index in changed[:3]:
        i = tuple(int(k) for k in index)
        notes.append(f"{where}{list(i)} = {float(values[i])!r} is not a {dtype} value; stored as {float(stored[i])!r}")
    if len(changed) > 3:
        notes.append(f"{where}: {len(changed) - 3} more values rounded to {dtype}")
    return stored


def _config(obj: dict) -> Config:
    raw = dict(obj.get("config") or {})
    known = {f.name for f in fields(Config)}
    unknown = sorted(set(raw) - known - {"running_stats"})
    if unknown:
        raise CaseError(f"/config: Expected: knobs among {sorted(known)}. Received: {unknown}")
    defaults = config_to_json(Config(channel_axis=raw.get("channel_axis", 1)))
    defaults.pop("running_stats")
    return config_from_json({**defaults, **raw})


def _state(obj: dict, config: Config, channels: int, notes: list) -> State:
    raw = dict(obj.get("initial_state") or {})
    arrays = {}
    for key, default in _STATE_DEFAULTS.items():
        values = _numbers(raw.get(key, [default] * channels), f"/initial_state/{key}")
        arrays[key] = _rounded(values, config.param_dtype, f"/initial_state/{key}", notes)
    extra = {k: _rounded(_numbers(raw[k], f"/initial_state/{k}"), config.param_dtype, f"/initial_state/{k}", notes)
             for k in RENORM_STATE_KEYS if k in raw}
    return State(**arrays, num_updates=int(raw.get("num_updates", 0)), **extra)


def _step(raw: dict, i: int, config: Config, notes: list) -> Step:
    where = f"/steps/{i}"
    x = _rounded(_numbers(raw.get("x"), f"{where}/x"), config.input_dtype, f"{where}/x", notes)
    optional = {k: _rounded(_numbers(raw[k], f"{where}/{k}"), config.input_dtype, f"{where}/{k}", notes)
                for k in ("dy", "sample_weights") if k in raw}
    sizes = raw.get("replica_sizes")
    return Step(raw.get("normalize_with", "batch"), bool(raw.get("update_running_stats", False)), x,
                tolerance=dict(raw.get("tolerance") or {}), replica_sizes=None if sizes is None else tuple(sizes),
                **optional)


def _given_outputs(raw: dict, i: int) -> dict:
    stated = dict(raw.get("expected") or {})
    unknown = sorted(set(stated) - set(_COMPARED) - {"num_updates"})
    if unknown:
        raise CaseError(f"/steps/{i}/expected: Expected: outputs among {list(_COMPARED)}. Received: {unknown}")
    return {k: (int(v) if k == "num_updates" else None if v is None else _numbers(v, f"/steps/{i}/expected/{k}"))
            for k, v in stated.items()}


def printed_rounding(values: np.ndarray) -> float:
    """Half a unit of the last digit a published number was printed with (the shortest repr of the
    parsed value is what was typed for up to 15 significant digits)."""
    finite = values[np.isfinite(values)]
    exponents = [Decimal(repr(float(v))).as_tuple().exponent for v in finite.ravel()]
    return 0.5 * 10.0 ** min(exponents) if exponents else 0.0


# Top-level fields of a description, and of each step, with the JSON type each must have
_DESCRIPTION_FIELDS = {"id": str, "description": str, "config": dict, "initial_state": dict, "steps": list}
_STEP_FIELDS = {"normalize_with": str, "update_running_stats": bool, "x": list, "dy": list, "sample_weights": list,
                "replica_sizes": list, "expected": dict, "tolerance": dict}
_TYPE_WORDS = {str: "a string", dict: "a mapping", list: "a list", bool: "true or false"}


def _check_shape(obj: dict) -> None:
    """CaseError naming the first field of the description that is absent, unknown or of the wrong
    type (before anything is built from it)."""
    for key in ("id", "description", "steps"):
        if key not in obj:
            raise CaseError(f"/{key}: Expected: present. Received: absent")
    _check_fields(obj, _DESCRIPTION_FIELDS, "")
    if not obj["steps"]:
        raise CaseError("/steps: Expected: at least one step. Received: an empty list")
    for i, step in enumerate(obj["steps"]):
        if not isinstance(step, dict):
            raise CaseError(f"/steps/{i}: Expected: a mapping. Received: {type(step).__name__}")
        _check_fields(step, _STEP_FIELDS, f"/steps/{i}")


def _check_fields(obj: dict, kinds: dict, where: str) -> None:
    for key, value in obj.items():
        if key not in kinds:
            raise CaseError(f"{where}/{key}: Expected: a field among {', '.join(kinds)}. Received: {key!r}")
        if value is not None and not isinstance(value, kinds[key]):
            raise CaseError(f"{where}/{key}: Expected: {_TYPE_WORDS[kinds[key]]}. Received: {type(value).__name__}")


def build_case(obj: dict, expect: str) -> tuple[Case, list[str]]:
    """The case and the lines explaining what was rounded and how each tolerance was chosen."""
    notes: list[str] = []
    _check_shape(obj)
    config = _config(obj)
    steps = [_step(raw, i, config, notes) for i, raw in enumerate(obj["steps"])]
    channels = steps[0].x.shape[config.channel_axis] if steps[0].x.ndim > config.channel_axis else 0
    state = _state(obj, config, channels, notes)
    case = Case(obj["id"], obj["id"].split("/")[0], obj["description"], config, state, steps)
    _attach_expected(case, obj["steps"], expect, notes)
    check_meaning(case)
    return case, notes


def _attach_expected(case: Case, raw_steps: list, expect: str, notes: list) -> None:
    results, traces = oracle.run_steps_traced(case.config, case.initial_state, case.steps)
    for i, (step, raw, computed, trace) in enumerate(zip(case.steps, raw_steps, results, traces)):
        given = _given_outputs(raw, i)
        step.expected = computed if expect == "oracle" else given
        stats = None if trace is None else trace[:2]
        gain = 1.0 if trace is None else trace[2]
        suggested = step_tolerance(case.config, {**computed, "num_updates": None}, stats, case.initial_state.gamma * gain,
                                   step)
        for key, value in step.expected.items():
            if value is None or key == "num_updates" or key in step.tolerance:
                continue
            step.tolerance[key] = _suggest(key, value, suggested[key], expect, case.config, i, notes)


def _suggest(key, value, suggested: dict, expect: str, config: Config, i: int, notes: list) -> dict:
    """The tolerance for one output (plain floats: the case file and ``show`` print them) and a
    note on how it was chosen; ``given`` numbers add half a unit of their last printed digit."""
    dtype = config.input_dtype if key in ("y", "batch_mean", "batch_var", "dx") else config.param_dtype
    rtol, atol = float(suggested["rtol"]), float(suggested["atol"])
    text = (f"step {i} {key}: rtol {rtol:.3g} = {rtol / machine_epsilon(dtype):g} x u({dtype}); atol {atol:.3g} "
            f"(rtol x the output's scale, plus the rounding terms of bnconform.reference.tolerance)")
    if expect == "given":
        printed = printed_rounding(np.asarray(value))
        atol += printed
        text += f" + {printed:.3g} (half a unit of the last printed digit)"
    notes.append(text)
    return {"rtol": rtol, "atol": atol}


def new(args) -> int:
    """``bnconform new DESCRIPTION -o CASE.json [--expect oracle|given]``."""
    path = Path(args.description)
    try:
        case, notes = build_case(read_readable(path), args.expect)
    except CaseError as exc:
        raise CaseError(str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError, RecursionError) as exc:
        # a value of a kind no check above foresaw: still the user's input, still one line
        raise CaseError(f"{path}: Expected: a description bnconform can build a case from. Received: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    out = Path(args.output) if args.output else path.with_suffix(".json")
    out.write_text(dumps_case(case), encoding="utf-8")
    for line in notes:
        print(f"  {line}")
    disagreement = oracle_disagreement(case)
    print(f"wrote {out} ({len(case.steps)} step(s); outputs: {', '.join(_stated(case))})")
    if disagreement:
        print(f"note: {disagreement}")
    return 0


def _stated(case: Case) -> list[str]:
    return sorted({k for s in case.steps for k, v in s.expected.items() if v is not None and k != "num_updates"},
                  key=list(_COMPARED).index)


def show(args) -> int:
    """``bnconform show CASE.json``: the case in the readable form ``new`` reads (round trip)."""
    import yaml

    from ..caseformat.validation import load_case

    case = load_case(Path(args.case))
    print(yaml.safe_dump(readable(case), sort_keys=False, width=120), end="")
    return 0


def readable(case: Case) -> dict:
    """The readable form of a case: decimals (repr of every float64: exact), NaN/inf as strings."""
    obj = case_to_json(case)
    out = {"id": case.id, "description": case.description, "config": obj["config"],
           "initial_state": {k: _decimals(getattr(case.initial_state, k)) for k in _STATE_DEFAULTS}}
    out["initial_state"]["num_updates"] = case.initial_state.num_updates
    out["initial_state"].update({k: _decimals(getattr(case.initial_state, k)) for k in RENORM_STATE_KEYS
                                 if getattr(case.initial_state, k) is not None})
    out["steps"] = [_readable_step(s) for s in case.steps]
    return out


def _readable_step(step: Step) -> dict:
    out = {"normalize_with": step.normalize_with, "update_running_stats": step.update_running_stats,
           "x": _decimals(step.x)}
    out.update({k: _decimals(getattr(step, k)) for k in ("sample_weights", "dy") if getattr(step, k) is not None})
    if step.replica_sizes is not None:
        out["replica_sizes"] = list(step.replica_sizes)
    out["expected"] = {k: (v if k == "num_updates" else None if v is None else _decimals(v))
                       for k, v in step.expected.items()}
    out["tolerance"] = step.tolerance
    return out


def _decimals(array) -> list:
    values = np.asarray(array, dtype=np.float64)
    text = np.vectorize(lambda v: v if np.isfinite(v) else str(v), otypes=[object])(values)
    return text.tolist()


def oracle_disagreement(case: Case) -> str | None:
    """None when the oracle reproduces the case's stated outputs; else the first mismatch and the
    single knob change (if any) under which the oracle does reproduce them."""
    from ..judging.compare import compare_case

    mismatches, _ = compare_case(case, oracle.run_case(case))
    if not mismatches:
        return None
    first = mismatches[0].line()
    for knob, changed in _alternatives(case):
        try:
            if not compare_case(case, oracle.run_case(changed))[0]:
                return f"{first}; the stated numbers match the oracle with {knob}"
        except (ValueError, ZeroDivisionError):
            continue
    return f"{first}; no single knob change explains it"


def _alternatives(case: Case):
    """(description, case) for each single-knob change worth trying, most common confusion first."""
    from ..caseformat.model import variant

    cfg, rs = case.config, case.config.running_stats
    other = {"bessel": "biased", "biased": "bessel"}[rs.variance]
    yield f"running_stats.variance = {other!r} (the knob says {rs.variance!r})", variant(case, running_stats={"variance": other})
    if rs.decay is not None:
        yield (f"running_stats.decay = {1 - rs.decay:g} (the knob says {rs.decay:g}: momentum read the other way)",
               variant(case, running_stats={"decay": 1 - rs.decay}))
    for mode in ("add_inside_sqrt", "add_outside_sqrt", "max_inside_sqrt"):
        if mode != cfg.epsilon_mode:
            yield f"epsilon_mode = {mode!r}", variant(case, epsilon_mode=mode)
    yield f"running_stats.zero_debias = {not rs.zero_debias}", variant(case, running_stats={"zero_debias": not rs.zero_debias})
    yield "epsilon_dtype = 'float32' (epsilon stored in float32)", variant(case, epsilon_dtype="float32")
    if rs.decay is not None:
        yield "running_stats.decay_dtype = 'float32'", variant(case, running_stats={"decay_dtype": "float32"})
