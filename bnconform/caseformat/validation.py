"""Validation of case files: the JSON Schema first, then meaning (shapes, lengths, knobs).

Every problem is reported as one line: ``<file>: <JSON location>: Expected: ... Received: ...``.

A valid file takes the fast path: the schema is checked by a compiled yes/no validator
(:mod:`bnconform.caseformat.schema_check`), and jsonschema's full walk runs only to explain a "no". Loaded
cases are kept per process, keyed by (resolved path, mtime_ns, size), so each file is parsed and
validated once however many backends or tests ask for it.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

from .bounded_input import size_problem
from .casefile import case_from_json
from .encoding import EncodingError
from .model import GRADIENT_KEYS, OUTPUT_KEYS, RENORM_STATE_KEYS, Case, count_per_channel

SCHEMA_PATH = Path(__file__).resolve().parent / "schema.json"


class CaseError(ValueError):
    """A case file is malformed; ``str()`` is the one line to show the user."""


@lru_cache(maxsize=1)
def _schema() -> dict:
    with open(SCHEMA_PATH, encoding="utf-8") as handle:
        return json.load(handle)


@lru_cache(maxsize=1)
def _validator():
    import jsonschema

    return jsonschema.Draft202012Validator(_schema())


@lru_cache(maxsize=1)
def _fast_check():
    """The compiled yes/no schema check; None if the schema uses a keyword it cannot compile."""
    from .schema_check import UnsupportedKeyword, compile_schema

    try:
        return compile_schema(_schema())
    except UnsupportedKeyword:
        return None


def _pointer(path) -> str:
    return "/" + "/".join(str(p) for p in path) if path else "/"


def _schema_error(obj) -> str | None:
    """None if ``obj`` is schema-valid, else one line naming the innermost failing field."""
    fast = _fast_check()
    if fast is not None and fast(obj):
        return None  # sound: the compiled check accepts only what jsonschema accepts
    import jsonschema

    error = jsonschema.exceptions.best_match(_validator().iter_errors(obj))
    if error is None:
        return None
    # Descend into oneOf/anyOf to name the innermost failing field.
    while error.context:
        error = jsonschema.exceptions.best_match(error.context)
    return f"{_pointer(error.absolute_path)}: Expected: {_expectation(error)}. Received: {_received(error)}"


def _expectation(error) -> str:
    """What the schema asks for, e.g. "maximum 1" or "only the properties ['a', 'b']"."""
    if error.validator == "additionalProperties" and error.validator_value is False:
        return f"only the properties {sorted(error.schema.get('properties', {}))}"
    return f"{error.validator} {error.validator_value!r}"


def _received(error) -> str:
    # jsonschema's const message ("1 was expected") names the wanted value, not the found one.
    return f"{error.instance!r:.80}" if error.validator == "const" else error.message


def _check(condition: bool, where: str, expected: str, received) -> None:
    if not condition:
        raise CaseError(f"{where}: Expected: {expected}. Received: {received}")


def _channels_of_x(case: Case) -> int:
    """C as the first input defines it (rank and channel axis checked first, so it exists)."""
    x, axis = case.steps[0].x, case.config.channel_axis
    _check(2 <= x.ndim <= 5, "/steps/0/x/shape", "rank 2 to 5", list(x.shape))
    _check(axis < x.ndim, "/config/channel_axis", f"an axis below the input rank {x.ndim}", axis)
    return int(x.shape[axis])


def _check_state(case: Case) -> None:
    cfg, state, c = case.config, case.initial_state, _channels_of_x(case)
    for name in ("gamma", "beta", "running_mean", "running_var"):
        array = getattr(state, name)
        _check(array.ndim == 1 and array.shape[0] == c, f"/initial_state/{name}/shape",
               f"[{c}] (one value per channel of x)", list(array.shape))
        _check(array.dtype.name == cfg.param_dtype, f"/initial_state/{name}/dtype",
               f"{cfg.param_dtype} (config.param_dtype)", array.dtype.name)


def _check_knobs(case: Case) -> None:
    rs = case.config.running_stats
    _check(rs.stated or not any(s.update_running_stats for s in case.steps), "/config/running_stats",
           "present when a step updates the running statistics", "absent")
    if rs.rule == "ema":
        _check(rs.decay is not None, "/config/running_stats/decay", "a number in [0, 1] for rule 'ema'", None)
    else:
        _check(rs.decay is None, "/config/running_stats/decay", "null for rule 'cumulative'", rs.decay)
        _check(not (rs.zero_debias or rs.num_updates_schedule), "/config/running_stats/rule",
               "'ema' when zero_debias or num_updates_schedule is set", "'cumulative'")
    if rs.zero_debias:
        _check(case.initial_state.num_updates == 0, "/initial_state/num_updates",
               "0 when zero_debias is set (the debias accumulators start empty)", case.initial_state.num_updates)
        _check(rs.decay is not None and rs.decay < 1, "/config/running_stats/decay",
               "a decay below 1 when zero_debias is set (1 - decay^t would be 0)", rs.decay)


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
    if expected.get("y") is not None:
        _check(expected["y"].shape == step.x.shape, f"{where}/expected/y/shape", list(step.x.shape),
               list(expected["y"].shape))
    for key in ("batch_mean", "batch_var", "running_mean", "running_var"):
        if expected.get(key) is not None:
            _check(expected[key].shape == (c,), f"{where}/expected/{key}/shape", f"[{c}]", list(expected[key].shape))
    has_batch = step.is_training and count_per_channel(step.x.shape, cfg.channel_axis) > 0 \
        and cfg.virtual_batch_size is None  # ghost batches have no single batch moment
    for key in ("batch_mean", "batch_var"):
        if key in expected:  # omitted: not compared; stated: an array exactly when it is defined
            _check((expected[key] is not None) == has_batch, f"{where}/expected/{key}",
                   "an array exactly when the step normalizes a non-empty batch without ghost batches (or omitted)",
                   "null" if has_batch else "an array")
    for key in OUTPUT_KEYS:
        if expected.get(key) is not None:
            _check(key in step.tolerance, f"{where}/tolerance", f"an entry for {key!r}", sorted(step.tolerance))


def _check_extension_knobs(case: Case) -> None:
    """renorm / virtual_batch_size / sample_weights: one per case, with the knobs they need."""
    cfg, rs, state = case.config, case.config.running_stats, case.initial_state
    _check(len(case.extensions) <= 1, "/config", "at most one of renorm, virtual_batch_size, sample_weights, "
           "replica_sizes (their combinations are not defined)", list(case.extensions))
    for key in RENORM_STATE_KEYS:
        array = getattr(state, key)
        _check((array is not None) == (cfg.renorm is not None), f"/initial_state/{key}",
               "present exactly when config.renorm is set", "absent" if array is None else "present")
        if array is not None:
            _check(array.shape == (case.channels,) and array.dtype.name == cfg.param_dtype, f"/initial_state/{key}",
                   f"[{case.channels}] values of {cfg.param_dtype}", f"{list(array.shape)} {array.dtype.name}")
    if cfg.renorm is not None:
        _check(cfg.epsilon_mode == "add_inside_sqrt", "/config/epsilon_mode", "'add_inside_sqrt' with renorm "
               "(sigma_B = sqrt(var + eps))", cfg.epsilon_mode)
        _check(rs.rule == "ema" and not (rs.zero_debias or rs.num_updates_schedule), "/config/running_stats",
               "a plain EMA with renorm (no cumulative rule, zero_debias or schedule)", rs)
        low, high = cfg.renorm.rmin, cfg.renorm.rmax
        _check(low is None or high is None or low <= high, "/config/renorm/rmin", f"<= rmax {high}", low)
    if set(case.extensions) & {"virtual_batch_size", "sample_weights", "replicas"}:
        _check(cfg.channel_axis != 0, "/config/channel_axis", "not 0 with ghost batches, sample weights or "
               "replicas (axis 0 holds the samples)", cfg.channel_axis)
    if "sample_weights" in case.extensions:
        _check(rs.variance == "biased", "/config/running_stats/variance", "'biased' with sample weights (a "
               "Bessel correction is undefined for weighted moments)", rs.variance)


def _check_step_extensions(case: Case, i: int) -> None:
    step, cfg, where = case.steps[i], case.config, f"/steps/{i}"
    takes_moments = step.is_training or step.update_running_stats
    if case.extensions and case.extensions != ("replicas",) and takes_moments:
        _check(count_per_channel(step.x.shape, cfg.channel_axis) > 0, f"{where}/x/shape",
               f"a non-empty batch when {case.extensions[0]} is set", list(step.x.shape))
    size = cfg.virtual_batch_size
    if size is not None and takes_moments:
        _check(step.x.shape[0] % size == 0, f"{where}/x/shape", f"a batch size divisible by virtual_batch_size "
               f"{size}", list(step.x.shape))
    for key in RENORM_STATE_KEYS:
        value = step.expected.get(key)
        _check(value is None or cfg.renorm is not None, f"{where}/expected/{key}",
               "only when config.renorm is set", "present")
        if value is not None:
            _check(value.shape == (case.channels,), f"{where}/expected/{key}/shape", f"[{case.channels}]",
                   list(value.shape))
            _check(key in step.tolerance, f"{where}/tolerance", f"an entry for {key!r}", sorted(step.tolerance))
    if step.sample_weights is not None:
        _check_weights(step, cfg, where, takes_moments)
    if "replicas" in case.extensions:
        _check_replicas(case, i)


def _check_replicas(case: Case, i: int) -> None:
    """Every step is replicated, over the same number of replicas, with sizes summing to the batch."""
    sizes, first, where = case.steps[i].replica_sizes, case.steps[0].replica_sizes, f"/steps/{i}/replica_sizes"
    _check(sizes is not None, where, "present on every step when one step has it (a replicated layer runs "
           "every call on all replicas)", "absent")
    _check(len(sizes) == len(first), where, f"{len(first)} replicas like step 0", len(sizes))
    _check(sum(sizes) == case.steps[i].x.shape[0], where, f"sizes summing to the batch size {case.steps[i].x.shape[0]}",
           list(sizes))


def _check_weights(step, cfg, where: str, takes_moments: bool) -> None:
    weights = step.sample_weights
    _check(takes_moments, f"{where}/sample_weights", "only on a step that computes batch moments", "an eval step")
    _check(weights.shape == step.x.shape[:1], f"{where}/sample_weights/shape", f"[{step.x.shape[0]}] (one per "
           "sample)", list(weights.shape))
    _check(weights.dtype.name == cfg.input_dtype, f"{where}/sample_weights/dtype", cfg.input_dtype, weights.dtype.name)
    wide = weights.astype("float64")
    _check(bool((wide >= 0).all() and wide.sum() > 0 and (wide < float("inf")).all()), f"{where}/sample_weights",
           "finite weights >= 0 with a positive sum", wide.tolist()[:8])


def _check_step_gradients(case: Case, i: int) -> None:
    """dy has the shape and dtype of x; dx / dgamma / dbeta are expected exactly when dy is given,
    dgamma / dbeta null exactly when scale / center is off."""
    step, cfg, where = case.steps[i], case.config, f"/steps/{i}"
    expected, has_dy = step.expected, step.dy is not None
    for key in GRADIENT_KEYS:
        _check(has_dy or key not in expected, f"{where}/expected/{key}", "only on a step with dy", "present")
    if not has_dy:
        return
    _check(step.dy.shape == step.x.shape, f"{where}/dy/shape", list(step.x.shape), list(step.dy.shape))
    _check(step.dy.dtype.name == cfg.input_dtype, f"{where}/dy/dtype", cfg.input_dtype, step.dy.dtype.name)
    if "dx" in expected:
        _check(expected["dx"] is not None and expected["dx"].shape == step.x.shape, f"{where}/expected/dx/shape",
               list(step.x.shape), None if expected["dx"] is None else list(expected["dx"].shape))
    for key, switch in (("dgamma", "scale"), ("dbeta", "center")):
        if key not in expected:
            continue
        value, on = expected[key], getattr(cfg, switch)
        _check((value is not None) == on, f"{where}/expected/{key}", f"an array exactly when config.{switch} is true",
               "null" if value is None else "an array")
        if value is not None:
            _check(value.shape == (case.channels,), f"{where}/expected/{key}/shape", f"[{case.channels}]",
                   list(value.shape))
    for key in GRADIENT_KEYS:
        if expected[key] is not None:
            _check(key in step.tolerance, f"{where}/tolerance", f"an entry for {key!r}", sorted(step.tolerance))


def check_meaning(case: Case) -> None:
    """Raise CaseError naming the first field whose meaning is inconsistent."""
    _check_state(case)
    _check_knobs(case)
    _check_extension_knobs(case)
    for i in range(len(case.steps)):
        _check_step(case, i)
        _check_step_extensions(case, i)
        _check_step_gradients(case, i)


class _NonJsonConstant(str):
    """Stands in for NaN / Infinity literals, which Python's json accepts but JSON does not."""


def _read_strict_json(path: Path):
    """Like casefile.read_json, but NaN / Infinity literals are kept as markers to report.

    Returns (object, whether any such literal occurred), so valid files skip the search for it."""
    seen = []

    def mark(literal):
        seen.append(literal)
        return _NonJsonConstant(literal)
    with open(path, encoding="utf-8") as handle:
        return json.load(handle, parse_constant=mark), bool(seen)


def _constant_error(obj, where=()) -> str | None:
    """The JSON location of the first NaN / Infinity literal, as an error line."""
    if isinstance(obj, _NonJsonConstant):
        return (f"{_pointer(where)}: Expected: a JSON number (non-finite values belong in hex strings "
                f"\"nan\", \"inf\"). Received: the non-JSON literal {obj}")
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        problem = _constant_error(value, (*where, key))
        if problem:
            return problem
    return None


def _integer_error(obj) -> str | None:
    """JSON Schema counts 1.0 as an integer; an axis or a counter must be written as 1."""
    fields = [("/config/channel_axis", obj["config"]["channel_axis"]),
              ("/initial_state/num_updates", obj["initial_state"]["num_updates"])]
    fields += [(f"/steps/{i}/expected/num_updates", s["expected"]["num_updates"]) for i, s in enumerate(obj["steps"])
               if "num_updates" in s["expected"]]
    for where, value in fields:
        if not isinstance(value, int):
            return f"{where}: Expected: an integer written without a fraction. Received: {value!r}"
    return None


def load_case(path) -> Case:
    """Read, schema-check, decode and meaning-check one case file; raises CaseError.

    A valid file is parsed and validated once per process while its mtime and size stay the same;
    each call returns its own deep copy, so a caller that modifies its case (a test building a
    broken variant) cannot change what the next caller loads."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as exc:
        raise CaseError(f"{path}: Expected: a readable UTF-8 file. Received: {exc}") from None
    too_large = size_problem(stat.st_size, what="a case file")
    if too_large:
        raise CaseError(f"{path}: {too_large}")
    resolved, version = str(path.resolve()), (stat.st_mtime_ns, stat.st_size)
    known = _LOADED.get(resolved)
    if known is None or known[0] != version:
        known = _LOADED[resolved] = (version, _load_uncached(path))  # replaces an outdated entry
    case = copy.deepcopy(known[1])
    return case if case.path == str(path) else replace(case, path=str(path))  # same data, as named


_LOADED: dict[str, tuple[tuple[int, int], Case]] = {}  # resolved path -> ((mtime_ns, size), Case)


def _load_uncached(path: Path) -> Case:
    try:
        obj, has_constant = _read_strict_json(path)
    except json.JSONDecodeError as exc:
        raise CaseError(f"{path}: line {exc.lineno} column {exc.colno}: Expected: valid JSON. Received: {exc.msg}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CaseError(f"{path}: Expected: a readable UTF-8 file. Received: {exc}") from None
    except RecursionError:
        raise CaseError(f"{path}: Expected: a case file. Received: JSON nested too deeply to read") from None
    problem = (has_constant and _constant_error(obj)) or _schema_error(obj) or _integer_error(obj)
    if problem:
        raise CaseError(f"{path}: {problem}")
    try:
        case = case_from_json(obj, str(path))
        check_meaning(case)
    except (CaseError, EncodingError) as exc:
        raise CaseError(f"{path}: {exc}") from None
    return case
