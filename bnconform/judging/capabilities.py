"""What an adapter's API can express, declared as data; the judge derives "unsupported" from it.

Every adapter declares one :class:`Capabilities`: for each canonical knob, the set of values its
API can express. Two sorts of knob:

* **structural** (ranks, channel positions, dtypes, step kinds, running rules, separate scale
  and center, extensions, ghost splits, resuming a counter): a case with a value outside the
  set is unsupported, with the reason.
* **conventions** (``epsilon_modes``, ``running_variance``, ``zero_debias``,
  ``num_updates_schedule``): values of a knob the canonical model leaves open. A framework that
  fixes one (torch always keeps a Bessel running variance, haiku always zero-debiases) cannot
  run a case asking for the other value -- *unless the case's expected results do not depend on
  it*: the case is expressible iff the oracle run with some allowed value reproduces the case's
  expectations within its tolerances (e.g. a biased case whose only update has N == 1).

``when`` lists conditional overrides, for APIs whose convention depends on the path taken
(tf_keras' fused kernel keeps a Bessel running variance, its non-fused path a biased one).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..caseformat.model import (EPSILON_MODES, GHOST_SPLITS, NORMALIZE_WITH, RUNNING_RULES, VARIANCE_KINDS,
                                Case, variant)
from .selectors import oracle_reproduces

FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16")
HALF_DTYPES = ("float16", "bfloat16")
STEP_KINDS = tuple((n, u) for n in NORMALIZE_WITH for u in (True, False))
CHANNEL_POSITIONS = ("first", "last", "other")  # axis 1; axis rank-1; any other axis
REPLICA_SPLITS = ("equal", "unequal", "empty")


def dtype_pairs(inputs=FLOAT_DTYPES, half_params=("float32",), same=True) -> frozenset:
    """(input_dtype, param_dtype) pairs: each input with params of the same dtype (``same``),
    and half inputs with params in ``half_params`` (mixed precision)."""
    pairs = {(d, d) for d in inputs} if same else set()
    pairs |= {(h, p) for h in inputs if h in HALF_DTYPES for p in half_params}
    return frozenset(pairs)


ALL_DTYPES = dtype_pairs()
STEP_NAMES = {("batch", True): "batch statistics with an update (training)",
              ("running", False): "running statistics without an update (inference)",
              ("batch", False): "batch statistics without an update",
              ("running", True): "running statistics with an update"}
VALUE_WORDS = {
    "running_variance": {"bessel": "a Bessel-corrected running variance (N/(N-1))",
                         "biased": "a biased running variance (divide by N)"},
    "zero_debias": {True: "zero-debiased running statistics", False: "a plain EMA without zero-debiasing"},
    "num_updates_schedule": {True: "the num_updates decay schedule", False: "a constant decay"},
    "epsilon_modes": {"add_inside_sqrt": "eps inside the square root", "add_outside_sqrt": "eps outside the "
                      "square root", "max_inside_sqrt": "max(var, eps) inside the square root"},
}
CONVENTIONS = ("epsilon_modes", "running_variance", "zero_debias", "num_updates_schedule")


@dataclass(frozen=True)
class Capabilities:
    """The canonical knob values an API can express (defaults: everything but the extensions)."""

    epsilon_modes: frozenset = frozenset(EPSILON_MODES)
    running_variance: frozenset = frozenset(VARIANCE_KINDS)
    zero_debias: frozenset = frozenset({False, True})
    num_updates_schedule: frozenset = frozenset({False, True})
    running_rules: frozenset = frozenset(RUNNING_RULES)
    step_kinds: frozenset = frozenset(STEP_KINDS)
    separate_scale_center: bool = True
    ranks: frozenset = frozenset({2, 3, 4, 5})
    channel_positions: frozenset = frozenset(CHANNEL_POSITIONS)
    dtypes: frozenset = ALL_DTYPES
    extensions: frozenset = frozenset()
    ghost_splits: frozenset = frozenset(GHOST_SPLITS)
    resumes_counter: bool = True  # can start from num_updates > 0
    # normalize_with values ("batch", "running") of steps whose dx, dgamma, dbeta the API's own
    # autodiff computes; empty = forward only (a case whose steps carry dy is then unsupported)
    gradients: frozenset = frozenset()
    # cross-replica BN (extension "replicas"): how many replicas, and which splits of the batch
    # ("equal" sizes, "unequal" sizes, some replica "empty")
    replica_counts: frozenset = frozenset({2, 4, 8})
    replica_splits: frozenset = frozenset(REPLICA_SPLITS)
    # False: a synchronized-BN API that only runs replicated steps (a case without replica_sizes
    # is one device's batch, which the framework's plain BN row already covers)
    unreplicated: bool = True
    when: tuple = field(default=())  # ((Selector, {knob: values}), ...): conditional overrides

    def inference_only(self) -> "Capabilities":
        """These capabilities narrowed to what an inference-only graph expresses (an exported or
        folded model): inference steps (running statistics, no update), no gradients."""
        return replace(self, step_kinds=frozenset({("running", False)}), gradients=frozenset())

    def for_case(self, case: Case, device: str) -> "Capabilities":
        """These capabilities with every matching ``when`` override applied."""
        resolved = self
        for selector, changes in self.when:
            if selector(case, device):
                resolved = replace(resolved, **{k: _frozen(v) for k, v in changes.items()}, when=())
        return resolved


def _frozen(value):
    return frozenset(value) if isinstance(value, (set, frozenset, list, tuple)) else value


def channel_positions_of(case: Case) -> set[str]:
    """Where the channel axis sits: axis 1 is "first", the last axis "last" (both for rank 2)."""
    axis, rank = case.config.channel_axis, case.rank
    found = {"first"} if axis == 1 else set()
    found |= {"last"} if axis == rank - 1 else set()
    return found or {"other"}


def _structural_reason(caps: Capabilities, case: Case, api: str) -> str | None:
    """The first structural knob ``caps`` cannot express, as one line. Expected and received
    values are sets or functions, turned into words only for the failing check (this runs for
    every cell at collection)."""
    cfg = case.config
    checks = [
        (set(case.extensions) <= caps.extensions, "model extensions", caps.extensions, list(case.extensions)),
        (case.rank in caps.ranks, "input ranks", caps.ranks, case.rank),
        (bool(channel_positions_of(case) & caps.channel_positions), "channel axis positions",
         caps.channel_positions, lambda: f"axis {cfg.channel_axis} of rank {case.rank}"),
        ((cfg.input_dtype, cfg.param_dtype) in caps.dtypes, "(input, parameter) dtypes", caps.dtypes,
         (cfg.input_dtype, cfg.param_dtype)),
        (cfg.scale == cfg.center or caps.separate_scale_center, "scale/center settings", "scale and center together",
         lambda: f"scale={cfg.scale}, center={cfg.center}"),
        (cfg.running_stats.rule in caps.running_rules, "running-statistics rules", caps.running_rules,
         cfg.running_stats.rule),
        (case.initial_state.num_updates == 0 or caps.resumes_counter, "initial update counts", "num_updates = 0",
         case.initial_state.num_updates),
        (case.gradient_modes <= caps.gradients, "gradients (steps with an upstream dy)",
         lambda: _gradient_words(caps.gradients), lambda: _gradient_words(case.gradient_modes)),
    ]
    if not caps.unreplicated:
        checks.append(("replicas" in case.extensions, "batches on one device",
                       "steps split over replicas (replica_sizes)", "no replica_sizes"))
    for sizes in {s.replica_sizes for s in case.steps if s.replica_sizes is not None}:
        checks.append((len(sizes) in caps.replica_counts, "replica counts", caps.replica_counts, len(sizes)))
        checks.append((replica_split(sizes) in caps.replica_splits, "replica splits", caps.replica_splits,
                       lambda sizes=sizes: f"{replica_split(sizes)} {list(sizes)}"))
    if cfg.virtual_batch_size is not None:
        checks.append((cfg.ghost_split in caps.ghost_splits, "ghost batch splits", caps.ghost_splits, cfg.ghost_split))
    for step in case.steps:
        kind = (step.normalize_with, step.update_running_stats)
        checks.append((kind in caps.step_kinds, "step kinds",
                       lambda: [STEP_NAMES[k] for k in STEP_KINDS if k in caps.step_kinds], STEP_NAMES[kind]))
    for ok, what, expected, received in checks:
        if not ok:
            return f"{api} cannot express these {what}. Expected: {_words(expected)}. Received: {_words(received)}"
    return None


def _words(value):
    """A check's expected or received value as shown: a set sorted, a function called."""
    if callable(value):
        return value()
    return sorted(value) if isinstance(value, (set, frozenset)) else value


def replica_split(sizes) -> str:
    """"empty" if a replica holds no sample, "unequal" if sizes differ, else "equal"."""
    if 0 in sizes:
        return "empty"
    return "equal" if len(set(sizes)) == 1 else "unequal"


def _gradient_words(modes) -> str:
    words = {"batch": "through batch statistics (training)", "running": "through running statistics (inference)"}
    return "; ".join(words[m] for m in sorted(modes)) or "none (forward only)"


def _case_value(case: Case, knob: str):
    cfg, rs = case.config, case.config.running_stats
    return {"epsilon_modes": cfg.epsilon_mode, "running_variance": rs.variance, "zero_debias": rs.zero_debias,
            "num_updates_schedule": rs.num_updates_schedule}[knob]


def _with_value(case: Case, knob: str, value) -> Case:
    if knob == "epsilon_modes":
        return variant(case, epsilon_mode=value)
    return variant(case, running_stats={{"running_variance": "variance"}.get(knob, knob): value})


def reproduces(case: Case, knob: str, value) -> bool:
    """The oracle run with ``knob = value`` matches the case's expected results (tolerances)."""
    return oracle_reproduces(case, lambda: _with_value(case, knob, value), (case.id, case.path, knob, value))


def _convention_reason(caps: Capabilities, case: Case, api: str) -> str | None:
    for knob in CONVENTIONS:
        allowed, asked = getattr(caps, knob), _case_value(case, knob)
        if asked in allowed:
            continue
        if any(reproduces(case, knob, value) for value in sorted(allowed, key=str)):
            continue  # the results do not depend on this knob here: run it with the API's value
        words = VALUE_WORDS[knob]
        uses = " or ".join(words[v] for v in sorted(allowed, key=str))
        return f"{api} always uses {uses}; this case asks for {words[asked]} and its results depend on it"
    return None


def unsupported_reason(caps: Capabilities, case: Case, device: str, api: str) -> str | None:
    """Why ``api`` cannot express ``case`` according to its declaration, or None if it can."""
    resolved = caps.for_case(case, device)
    return _structural_reason(resolved, case, api) or _convention_reason(resolved, case, api)


def describe(caps: Capabilities) -> dict[str, str]:
    """One readable value per knob, for the report's capability table."""
    def values(knob):
        words = VALUE_WORDS.get(knob, {})
        return ", ".join(str(words.get(v, v)).split(" (")[0] for v in sorted(getattr(caps, knob), key=str)) or "none"

    table = {knob: values(knob) for knob in CONVENTIONS}
    table.update({
        "running_rules": values("running_rules"), "ranks": values("ranks"), "channel_positions": values("channel_positions"),
        "step_kinds": "; ".join(STEP_NAMES[k] for k in STEP_KINDS if k in caps.step_kinds),
        "separate_scale_center": "yes" if caps.separate_scale_center else "no (one flag)",
        "dtypes": ", ".join(f"{i}/{p}" if i != p else i for i, p in sorted(caps.dtypes)),
        "extensions": values("extensions"), "ghost_splits": values("ghost_splits"),
        "resumes_counter": "yes" if caps.resumes_counter else "no",
        "gradients": _gradient_words(caps.gradients),
        "replicas": (f"{values('replica_counts')} replicas; splits: {values('replica_splits')}"
                     + ("" if caps.unreplicated else "; replicated cases only")
                     if "replicas" in caps.extensions else "no")})
    for selector, changes in caps.when:
        for knob, value in changes.items():
            values = sorted(_frozen(value), key=str)
            shown = (_gradient_words(values) if knob == "gradients" else
                     ", ".join(str(VALUE_WORDS.get(knob, {}).get(v, v)).split(" (")[0] for v in values) or "none")
            table[knob] += f"; {shown} when {selector.describe()}"
    return table
