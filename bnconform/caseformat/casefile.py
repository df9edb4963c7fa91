"""Reading and writing case files (JSON, one case per file; format in docs/case-format.md).

Loading parses JSON and decodes arrays; nothing in a file is ever executed or imported.
"""

from __future__ import annotations

import json
from pathlib import Path

from .encoding import decode_array, encode_array
from .model import GRADIENT_KEYS, OUTPUT_KEYS, RENORM_STATE_KEYS, Case, Config, Renorm, RunningStats, State, Step

FORMAT_VERSION = 1
_STATE_ARRAYS = ("gamma", "beta", "running_mean", "running_var")


def config_to_json(config: Config) -> dict:
    """The config object; extension knobs appear only when set, so older files stay unchanged."""
    rs = config.running_stats
    obj = {"channel_axis": config.channel_axis, "epsilon": config.epsilon}
    if config.epsilon_dtype is not None:
        obj["epsilon_dtype"] = config.epsilon_dtype
    obj.update({"epsilon_mode": config.epsilon_mode, "epsilon_floor": config.epsilon_floor, "scale": config.scale,
                "center": config.center, "input_dtype": config.input_dtype, "param_dtype": config.param_dtype})
    if rs.stated:
        obj["running_stats"] = {"rule": rs.rule, "decay": rs.decay, "variance": rs.variance,
                                "zero_debias": rs.zero_debias, "num_updates_schedule": rs.num_updates_schedule}
        if rs.decay_dtype is not None:
            obj["running_stats"]["decay_dtype"] = rs.decay_dtype
    if config.renorm is not None:
        rn = config.renorm
        obj["renorm"] = {"rmin": rn.rmin, "rmax": rn.rmax, "dmax": rn.dmax, "decay": rn.decay}
    if config.virtual_batch_size is not None:
        obj["virtual_batch_size"] = config.virtual_batch_size
        obj["ghost_split"] = config.ghost_split
    return obj


def config_from_json(obj: dict) -> Config:
    fields = dict(obj)
    stated = "running_stats" in obj  # an inference-only case may leave the update knobs out
    fields["running_stats"] = RunningStats(**obj["running_stats"]) if stated else RunningStats(stated=False)
    if fields.get("renorm") is not None:
        fields["renorm"] = Renorm(**obj["renorm"])
    return Config(**fields)


def _expected_to_json(expected: dict, has_dy: bool) -> dict:
    """The outputs the step states (an omitted one is not compared); None is written as null."""
    out = {}
    for key in OUTPUT_KEYS:
        if key in expected:
            out[key] = None if expected[key] is None else encode_array(expected[key], "float64")
    for key in RENORM_STATE_KEYS:  # renorm cases only
        if expected.get(key) is not None:
            out[key] = encode_array(expected[key], "float64")
    if expected.get("num_updates") is not None:
        out["num_updates"] = int(expected["num_updates"])
    for key in GRADIENT_KEYS if has_dy else ():  # steps with an upstream gradient only
        if key in expected:
            out[key] = None if expected[key] is None else encode_array(expected[key], "float64")
    return out


def _step_to_json(step: Step, cfg: Config) -> dict:
    obj = {"normalize_with": step.normalize_with, "update_running_stats": step.update_running_stats,
           "x": encode_array(step.x, cfg.input_dtype)}
    if step.sample_weights is not None:
        obj["sample_weights"] = encode_array(step.sample_weights, cfg.input_dtype)
    if step.dy is not None:
        obj["dy"] = encode_array(step.dy, cfg.input_dtype)
    if step.replica_sizes is not None:
        obj["replica_sizes"] = [int(n) for n in step.replica_sizes]
    obj["expected"] = _expected_to_json(step.expected, step.dy is not None)
    obj["tolerance"] = step.tolerance
    return obj


def case_to_json(case: Case) -> dict:
    """The JSON object of a case (arrays bit-exact, expected values in float64)."""
    cfg, state = case.config, case.initial_state
    renorm_state = {k: encode_array(getattr(state, k), cfg.param_dtype)
                    for k in RENORM_STATE_KEYS if getattr(state, k) is not None}
    return {
        "format_version": FORMAT_VERSION,
        "id": case.id,
        "family": case.family,
        "description": case.description,
        "config": config_to_json(cfg),
        "initial_state": {
            **{k: encode_array(getattr(state, k), cfg.param_dtype) for k in _STATE_ARRAYS},
            "num_updates": state.num_updates,
            **renorm_state,
        },
        "steps": [_step_to_json(s, cfg) for s in case.steps],
    }


def _format(value, indent: str = "") -> str:
    """JSON with two-space indentation, but lists of scalars kept on one line."""
    inner = indent + "  "
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(k)}: {_format(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}" if items else "{}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        return "[\n" + ",\n".join(inner + _format(v, inner) for v in value) + "\n" + indent + "]"
    return json.dumps(value, allow_nan=False)


def dumps_case(case: Case) -> str:
    """Canonical text of a case file: stable key order, two-space indent, final newline."""
    return _format(case_to_json(case)) + "\n"


def _decode_optional(value, where):
    return None if value is None else decode_array(value, where).astype("float64")


def case_from_json(obj: dict, path: str | None = None) -> Case:
    """Build a Case from an object that passed validation (see :mod:`bnconform.caseformat.validation`)."""
    state_obj = obj["initial_state"]
    renorm_state = {k: decode_array(state_obj[k], f"/initial_state/{k}") for k in RENORM_STATE_KEYS if k in state_obj}
    state = State(**{k: decode_array(state_obj[k], f"/initial_state/{k}") for k in _STATE_ARRAYS},
                  num_updates=state_obj["num_updates"], **renorm_state)
    steps = []
    for i, s in enumerate(obj["steps"]):
        where = f"/steps/{i}"
        stated = s["expected"]  # outputs left out are not compared
        expected = {k: _decode_optional(stated[k], f"{where}/expected/{k}")
                    for k in OUTPUT_KEYS + RENORM_STATE_KEYS + GRADIENT_KEYS if k in stated}
        if "num_updates" in stated:
            expected["num_updates"] = stated["num_updates"]
        optional = {k: None if s.get(k) is None else decode_array(s[k], f"{where}/{k}") for k in ("sample_weights", "dy")}
        replicas = None if s.get("replica_sizes") is None else tuple(s["replica_sizes"])
        steps.append(Step(s["normalize_with"], s["update_running_stats"], decode_array(s["x"], f"{where}/x"),
                          expected, s.get("tolerance", {}), **optional, replica_sizes=replicas))
    return Case(obj["id"], obj["family"], obj["description"], config_from_json(obj["config"]),
                state, steps, path)


def read_json(path: Path):
    """Parse a file as JSON (raises json.JSONDecodeError / OSError / UnicodeDecodeError)."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
