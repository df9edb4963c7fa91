"""Validation of case files: the JSON Schema first, then meaning (shapes, lengths, knobs).

Every problem is reported as one line: ``<file>: <JSON location>: Expected: ... Received: ...``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from .casefile import case_from_json, read_json
from .encoding import EncodingError
from .model import OUTPUT_KEYS, Case, count_per_channel

SCHEMA_PATH = Path(__file__).resolve().parent / "schema.json"


class CaseError(ValueError):
    """A case file is malformed; ``str()`` is the one line to show the user."""


@lru_cache(maxsize=1)
def _validator():
    import jsonschema

    with open(SCHEMA_PATH, encoding="utf-8") as handle:
        schema = json.load(handle)
    return jsonschema.Draft202012Validator(schema)


def _pointer(path) -> str:
    return "/" + "/".join(str(p) for p in path) if path else "/"


def _schema_error(obj) -> str | None:
    import jsonschema

    error = jsonschema.exceptions.best_match(_validator().iter_errors(obj))
    if error is None:
        return None
    # Descend into oneOf/anyOf to name the innermost failing field.
    while error.context:
        error = jsonschema.exceptions.best_match(error.context)
    expected = error.validator_value if error.validator in ("enum", "const", "type", "required") else error.validator
    return f"{_pointer(error.absolute_path)}: Expected: {error.validator} {expected!r}. Received: {error.message}"


def _check(condition: bool, where: str, expected: str, received) -> None:
    if not condition:
        raise CaseError(f"{where}: Expected: {expected}. Received: {received}")


def _check_state(case: Case) -> None:
    cfg, state, c = case.config, case.initial_state, case.channels
    for name in ("gamma", "beta", "running_mean", "running_var"):
        array = getattr(state, name)
        _check(array.ndim == 1 and array.shape[0] == c, f"/initial_state/{name}/shape",
               f"[{c}] (one value per channel)", list(array.shape))
        _check(array.dtype.name == cfg.param_dtype, f"/initial_state/{name}/dtype",
               f"{cfg.param_dtype} (config.param_dtype)", array.dtype.name)


def _check_knobs(case: Case) -> None:
    rs = case.config.running_stats
    if rs.rule == "ema":
        _check(rs.decay is not None, "/config/running_stats/decay", "a number in [0, 1] for rule 'ema'", None)
    else:
        _check(rs.decay is None, "/config/running_stats/decay", "null for rule 'cumulative'", rs.decay)
        _check(not (rs.zero_debias or rs.num_updates_schedule), "/config/running_stats/rule",
               "'ema' when zero_debias or num_updates_schedule is set", "'cumulative'")
    if rs.zero_debias:
        _check(case.initial_state.num_updates == 0, "/initial_state/num_updates",
               "0 when zero_debias is set (the debias accumulators start empty)", case.initial_state.num_updates)


def _check_step(case: Case, i: int) -> None:
    step, cfg, where = case.steps[i], case.config, f"/steps/{i}"
    rank, c = step.x.ndim, case.channels
    _check(2 <= rank <= 5, f"{where}/x/shape", "rank 2 to 5", list(step.x.shape))
    _check(rank == case.rank, f"{where}/x/shape", f"rank {case.rank} like step 0", list(step.x.shape))
    _check(cfg.channel_axis < rank, "/config/channel_axis", f"an axis below the input rank {rank}", cfg.channel_axis)
    _check(step.x.shape[cfg.channel_axis] == c, f"{where}/x/shape",
           f"{c} channels on axis {cfg.channel_axis}", list(step.x.shape))
    _check(step.x.dtype.name == cfg.input_dtype, f"{where}/x/dtype", f"{cfg.input_dtype} (config.input_dtype)", step.x.dtype.name)
    expected = step.expected
    _check(expected["y"].shape == step.x.shape, f"{where}/expected/y/shape", list(step.x.shape), list(expected["y"].shape))
    for key in ("batch_mean", "batch_var", "running_mean", "running_var"):
        if expected[key] is not None:
            _check(expected[key].shape == (c,), f"{where}/expected/{key}/shape", f"[{c}]", list(expected[key].shape))
    has_batch = step.is_training and count_per_channel(step.x.shape, cfg.channel_axis) > 0
    _check((expected["batch_mean"] is not None) == has_batch, f"{where}/expected/batch_mean",
           "an array exactly when the step normalizes a non-empty batch", "null" if has_batch else "an array")
    for key in OUTPUT_KEYS:
        if expected[key] is not None:
            _check(key in step.tolerance, f"{where}/tolerance", f"an entry for {key!r}", sorted(step.tolerance))


def check_meaning(case: Case) -> None:
    """Raise CaseError naming the first field whose meaning is inconsistent."""
    _check_state(case)
    _check_knobs(case)
    for i in range(len(case.steps)):
        _check_step(case, i)


def load_case(path) -> Case:
    """Read, schema-check, decode and meaning-check one case file; raises CaseError."""
    path = Path(path)
    try:
        obj = read_json(path)
    except json.JSONDecodeError as exc:
        raise CaseError(f"{path}: line {exc.lineno} column {exc.colno}: Expected: valid JSON. Received: {exc.msg}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CaseError(f"{path}: Expected: a readable UTF-8 file. Received: {exc}") from None
    problem = _schema_error(obj)
    if problem:
        raise CaseError(f"{path}: {problem}")
    try:
        case = case_from_json(obj, str(path))
        check_meaning(case)
    except (CaseError, EncodingError) as exc:
        raise CaseError(f"{path}: {exc}") from None
    return case
