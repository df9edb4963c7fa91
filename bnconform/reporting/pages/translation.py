"""What moving a model between two backends changes, as facts: ``bnconform port FROM TO`` and the
main page's porting table both format these, so the two cannot disagree.

Every fact is read from a results document, never typed per framework:

* the EMA knob from ``decay_parameter`` (``("momentum", "new")`` weighs the new batch, its value is
  1 - decay; ``("momentum", "old")`` weighs the old statistic, its value is the decay) and the
  installed framework's ``defaults`` (absent from some documents: then "not recorded");
* epsilon defaults from ``defaults``;
* the running-variance kind per *code path*: an adapter whose convention depends on the path
  declares it as a conditional capability ("a biased running variance; a Bessel-corrected running
  variance when <condition>"), each condition one path and "other inputs" the rest. A path's
  evidence is the cells that ran with that kind (their ranks and input dtypes) and the declared
  deviations whose "applies to" names the condition (or its negation).

Lives in reporting (not interfaces) because the pages may not import the command line.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from ...judging.capabilities import VALUE_WORDS
from ..profile import RAN, depends_on_variance

WEIGHS = {"new": "weight on the new batch", "old": "weight on the old statistic"}
KIND_WORDS = {"bessel": "Bessel-corrected", "biased": "biased"}  # the canonical model's variance kinds
FACTORS = {("bessel", "biased"): "N/(N-1)", ("biased", "bessel"): "(N-1)/N"}


@dataclass
class Side:
    """One backend's metadata as a results document stores it (capabilities as described text);
    ``ran``: variance kind -> case_meta of its cells that ran and whose results depend on the kind."""

    name: str
    decay_parameter: tuple | None = None
    defaults: dict = field(default_factory=dict)
    capabilities: dict = field(default_factory=dict)
    ran: dict = field(default_factory=dict)
    deviations: list = field(default_factory=list)


def side_of(document: dict, name: str) -> Side:
    """A backend's side of a translation (absent keys: not declared, not recorded)."""
    meta = document.get("adapters", {}).get(name, {})
    decay = meta.get("decay_parameter")
    return Side(name, tuple(decay) if decay else None, dict(meta.get("defaults") or {}),
                dict(meta.get("capabilities") or {}), _variance_runs(document, name), list(meta.get("deviations") or []))


def _variance_runs(document: dict, name: str) -> dict:
    """Cells of ``name`` that ran a case depending on the running-variance kind, by that kind."""
    metas, found = document.get("case_meta") or {}, collections.defaultdict(dict)
    for v in document.get("verdicts", []):
        meta = metas.get(v["case"])
        if v["adapter"] == name and v["status"] in RAN and meta and depends_on_variance(meta):
            found[meta["variance"]][v["case"]] = meta  # one per case, whichever devices it ran on
    return {kind: list(cases.values()) for kind, cases in found.items()}


def number(value) -> str:
    """Shortest readable spelling of a knob value (0.9, not 0.9000000000000000222)."""
    return f"{round(float(value), 12):g}"


def _known(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --- Momentum and epsilon -----------------------------------------------------------------------

@dataclass(frozen=True)
class Momentum:
    """TO's EMA value for FROM's: ``flip`` when one weighs the new batch and the other the old
    statistic (value = 1 - value). ``source`` / ``wanted`` / ``target_default``: None when the
    document records no default."""

    a: Side
    b: Side
    flip: bool
    source: float | None
    wanted: float | None
    target_default: float | None

    @property
    def target_default_fits(self) -> bool:
        return (self.wanted is not None and self.target_default is not None
                and abs(self.target_default - self.wanted) <= 1e-12 * max(1.0, abs(self.wanted)))


def momentum(a: Side, b: Side) -> Momentum | None:
    """The EMA translation, or None when a side declares no EMA knob (decay_parameter None)."""
    if a.decay_parameter is None or b.decay_parameter is None:
        return None
    flip = a.decay_parameter[1] != b.decay_parameter[1]
    source = a.defaults.get("decay_parameter")
    source = float(source) if _known(source) else None
    wanted = None if source is None else (1 - source if flip else source)
    default = b.defaults.get("decay_parameter")
    return Momentum(a, b, flip, source, wanted, float(default) if _known(default) else None)


@dataclass(frozen=True)
class Epsilon:
    """Both default epsilons (None: not recorded); ``same`` when both are known and equal."""

    source: float | None
    target: float | None

    @property
    def same(self) -> bool:
        return self.source is not None and self.target is not None and abs(self.source - self.target) <= 1e-12 * self.source


def epsilon(a: Side, b: Side) -> Epsilon:
    ea, eb = a.defaults.get("epsilon"), b.defaults.get("epsilon")
    return Epsilon(float(ea) if _known(ea) else None, float(eb) if _known(eb) else None)


# --- The running variance, per code path ----------------------------------------------------------

def convention_values(text: str, knob: str) -> tuple[set, list[str]]:
    """Parse a described convention ("a, b; c when X") into (values always, ["c when X", ...])."""
    base, *conditional = text.split("; ")
    return _values(base, knob), conditional


def _values(text: str, knob: str) -> set:
    words = {value: full.split(" (")[0] for value, full in VALUE_WORDS[knob].items()}
    return {value for value, short in words.items() if short in text}


def declared_paths(side: Side, knob: str = "running_variance") -> list[tuple[str | None, set]]:
    """[(condition, values), ...]: one entry per declared condition, then (None, the base values)
    for every other input; [(None, values)] when the convention does not depend on the path."""
    base, conditional = convention_values(side.capabilities[knob], knob)
    paths = []
    for text in conditional:
        values, _, condition = text.partition(" when ")
        paths.append((condition, _values(values, knob)))
    return paths + [(None, base)]


@dataclass(frozen=True)
class VariancePath:
    """One code path of a pair: ``conditions`` ((side name, condition, holds), ...), empty when
    neither side switches; the kinds each side keeps there."""

    conditions: tuple
    kinds_a: frozenset
    kinds_b: frozenset

    @property
    def factor(self) -> str | None:
        """"N/(N-1)" (TO's value times it is FROM's) or "(N-1)/N" where one side keeps only a
        Bessel-corrected and the other only a biased variance; None otherwise."""
        if len(self.kinds_a) == 1 and len(self.kinds_b) == 1:
            return FACTORS.get((next(iter(self.kinds_a)), next(iter(self.kinds_b))))
        return None

    @property
    def shared(self) -> frozenset:
        return self.kinds_a & self.kinds_b

    def label(self, named: bool = False) -> str:
        """'inputs where X' for a path whose condition holds, 'every other input' for the rest;
        ``named``: each condition followed by the side(s) declaring it."""
        held = [condition + (f" [{name}]" if named else "") for name, condition, holds in self.conditions if holds]
        return f"inputs where {' and '.join(held)}" if held else "every other input"

    def owners(self) -> list[str]:
        return list(dict.fromkeys(n for names, _, _ in self.conditions for n in names.split(" and ")))


def variance_paths(a: Side, b: Side) -> list[VariancePath] | None:
    """Every combination of the two sides' declared paths (None: a side declares no variance);
    a condition both sides state in the same words is one path, not two."""
    if "running_variance" not in a.capabilities or "running_variance" not in b.capabilities:
        return None
    paths = []
    for ca, va in declared_paths(a):
        for cb, vb in declared_paths(b):
            conditions = _conditions(a, ca, declared_paths(a)) + _conditions(b, cb, declared_paths(b))
            if _consistent(conditions):
                paths.append(VariancePath(_merged(conditions), frozenset(va), frozenset(vb)))
    return paths


def _conditions(side: Side, condition: str | None, paths) -> tuple:
    """The path as (name, condition, holds) triples: the one that holds, or all that do not."""
    if condition is not None:
        return ((side.name, condition, True),)
    return tuple((side.name, c, False) for c, _ in paths if c is not None)


def _consistent(conditions) -> bool:
    """False when the same condition both holds and does not (the sides share its words)."""
    states = collections.defaultdict(set)
    for _, condition, holds in conditions:
        states[condition].add(holds)
    return all(len(s) == 1 for s in states.values())


def _merged(conditions) -> tuple:
    """One triple per condition (names joined when both sides state it)."""
    names, holds = collections.defaultdict(list), {}
    for name, condition, held in conditions:
        names[condition].append(name)
        holds[condition] = held
    return tuple((" and ".join(n), c, holds[c]) for c, n in names.items())


def path_evidence(side: Side, path: VariancePath, kinds: frozenset) -> str:
    """What this run measured of ``side`` on a path: the cells that ran with its kind (ranks and
    input dtypes), and the declared deviations whose applies-to names the path; "" if none."""
    own = [(c, holds) for name, c, holds in path.conditions if side.name in name.split(" and ")]
    if not own or len(kinds) != 1:
        return ""
    kind = next(iter(kinds))
    metas = side.ran.get(kind, [])
    words = f"with a {KIND_WORDS.get(kind, kind)} running variance ran"
    parts = [f"{len(metas)} {side.name} cell(s) {words}, on inputs of rank {_joined(m['rank'] for m in metas)} in "
             f"{_joined(m['input_dtype'] for m in metas)}" if metas else f"no {side.name} cell {words} (declared only)"]
    names = [d["name"] for d in side.deviations if all(_selects_where_holds(d, c) == holds for c, holds in own)
             and any(c in d.get("applies_to", "") for c, _ in own)]
    if names:
        parts.append(f"declared for this path only: {', '.join(names)}")
    return "; ".join(parts)


def _selects_where_holds(deviation: dict, condition: str) -> bool:
    """Whether a deviation's applies-to selects the path where ``condition`` holds (not its negation)."""
    return f"not ({condition})" not in deviation.get("applies_to", "")


def _joined(values) -> str:
    return ", ".join(str(v) for v in sorted(set(values), key=str))


def kind_words(kinds) -> str:
    """'Bessel-corrected', 'biased' or both joined by 'or' (the canonical kinds)."""
    return " or ".join(KIND_WORDS.get(k, str(k)) for k in sorted(kinds, key=str)) or "nothing declared"
