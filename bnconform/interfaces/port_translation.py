"""The parameter translation of ``bnconform port``: how each knob is spelled on each side.

Derived from the adapters' metadata in a results document (``decay_parameter``,
``framework_defaults()`` and the described ``capabilities``), never typed per pair of
frameworks: the EMA value that keeps FROM's decay d is ``1 - d`` or ``d`` in TO's spelling, a
default epsilon that differs is stated, and a Bessel-vs-biased running variance differs by the
factor N/(N-1), N the values per channel in a training batch. :mod:`.port` adds the measured
differences and the command.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..judging.capabilities import CONVENTIONS, VALUE_WORDS

WEIGHS = {"new": "weight on the new batch", "old": "weight on the old statistic"}
KNOB_NAMES = {"epsilon_modes": "epsilon placement", "running_variance": "running variance",
              "zero_debias": "zero-debias", "num_updates_schedule": "decay schedule"}
CONSEQUENCES = {
    "epsilon_modes": "y differs most on channels whose variance is comparable to eps",
    "zero_debias": "zero-debiasing divides the EMA by 1 - decay^t, so early running statistics follow the "
                   "batches instead of the initial values; the two agree once decay^t is negligible",
    "num_updates_schedule": "the schedule uses min(decay, (1 + n) / (10 + n)), so the first updates weigh new "
                            "batches more; the two agree once (1 + n) / (10 + n) exceeds decay",
}
LIST_SEPARATORS = {"step_kinds": "; "}
CONVENTION_WORDS = " always uses "  # how capabilities words an unsupported convention value


@dataclass
class Side:
    """One backend's metadata as a results document stores it (capabilities as described text)."""

    name: str
    decay_parameter: tuple | None = None
    defaults: dict = field(default_factory=dict)
    capabilities: dict = field(default_factory=dict)


def _number(value) -> str:
    """Shortest readable spelling of a knob value (0.9, not 0.9000000000000000222)."""
    return f"{round(float(value), 12):g}"


# --- Part 1: the parameter translation ---------------------------------------------------------

def ema_lines(a: Side, b: Side) -> list[str]:
    """TO's EMA value for FROM's decay: value = 1 - decay when a side weighs the new batch."""
    if a.decay_parameter is None or b.decay_parameter is None:
        missing = " and ".join(s.name for s in (a, b) if s.decay_parameter is None)
        return [f"momentum: {missing} declares no EMA knob (decay_parameter is None): nothing to translate"]
    (pa, wa), (pb, wb) = a.decay_parameter, b.decay_parameter
    flip = "1 - " if wa != wb else ""
    lines = [f"momentum: {b.name} {pb} = {flip}{a.name} {pa} ({a.name}: {WEIGHS[wa]}; {b.name}: {WEIGHS[wb]})"]
    value = a.defaults.get("decay_parameter")
    if isinstance(value, (int, float)):
        wanted = 1 - value if flip else value
        line = (f"momentum: {a.name} {pa}={_number(value)} ({WEIGHS[wa]}) -> "
                f"{b.name} {pb}={_number(wanted)} ({WEIGHS[wb]})")
        lines.append(line + _explicit(b, "decay_parameter", pb, wanted))
    elif "decay_parameter" in a.defaults:
        lines.append(f"momentum: {a.name} has no default {pa} ({value!r}): translate the value the model uses")
    return lines


def _explicit(b: Side, key: str, spelled: str, wanted: float) -> str:
    """'; TO's default is x: pass name=y explicitly' when TO's own default is not what is wanted."""
    default = b.defaults.get(key)
    if not isinstance(default, (int, float)):
        return f"; pass {spelled}={_number(wanted)} explicitly"
    if abs(default - wanted) <= 1e-12 * max(1.0, abs(wanted)):
        return f" (also {b.name}'s default)"
    return f"; {b.name}'s default is {spelled}={_number(default)}: pass {spelled}={_number(wanted)} explicitly"


def epsilon_lines(a: Side, b: Side) -> list[str]:
    """Epsilon defaults: TO must be given FROM's default explicitly when they differ."""
    ea, eb = a.defaults.get("epsilon"), b.defaults.get("epsilon")
    if not isinstance(ea, (int, float)):
        return [f"epsilon: {a.name}'s default epsilon is not known here: pass the model's epsilon explicitly"]
    if isinstance(eb, (int, float)) and abs(ea - eb) <= 1e-12 * ea:
        return [f"epsilon: eps default {_number(ea)} in both: nothing to pass"]
    shown = _number(eb) if isinstance(eb, (int, float)) else "unknown"
    return [f"epsilon: {a.name} eps default {_number(ea)} -> {b.name} eps default {shown}: "
            f"pass epsilon={_number(ea)} explicitly"]


def convention_values(text: str, knob: str) -> tuple[set, list[str]]:
    """Parse a described convention ("a, b; c when X") into (values always, ["c when X", ...])."""
    base, *conditional = text.split("; ")
    words = {value: full.split(" (")[0] for value, full in VALUE_WORDS[knob].items()}
    return {value for value, short in words.items() if short in base}, conditional


def _words(knob: str, values) -> str:
    return " or ".join(VALUE_WORDS[knob][v].split(" (")[0] for v in sorted(values, key=str)) or "nothing declared"


def variance_lines(a: Side, b: Side) -> list[str]:
    """The N/(N-1) rescale between a Bessel-corrected and a biased running variance."""
    if "running_variance" not in a.capabilities or "running_variance" not in b.capabilities:
        return [f"running variance: not declared by {_undeclared(a, b, 'running_variance')}"]
    (va, ca), (vb, cb) = (convention_values(s.capabilities["running_variance"], "running_variance") for s in (a, b))
    if va & vb:
        line = f"running variance: both can keep {_words('running_variance', va & vb)}"
    elif va == {"bessel"} and vb == {"biased"}:
        line = _rescale(a, b, "N/(N-1)", "Bessel-corrected", "biased")
    elif va == {"biased"} and vb == {"bessel"}:
        line = _rescale(a, b, "(N-1)/N", "biased", "Bessel-corrected")
    else:
        words_a, words_b = _words("running_variance", va), _words("running_variance", vb)
        line = f"running variance: {a.name} keeps {words_a}, {b.name} {words_b}"
    return [line] + [f"running variance, conditional: {s.name} keeps {c}" for s, cs in ((a, ca), (b, cb)) for c in cs]


def _rescale(a: Side, b: Side, factor: str, kind_a: str, kind_b: str) -> str:
    return (f"running variance: {a.name} keeps a {kind_a} running variance, {b.name} a {kind_b} one: after training "
            f"in {b.name}, multiply its moving variance by {factor} to get {a.name}'s value, where N is the number of "
            f"values per channel in one training batch (batch size x spatial positions); weights imported from "
            f"{a.name} need no rescale for inference (the stored value is used as is)")


def _undeclared(a: Side, b: Side, knob: str) -> str:
    return " and ".join(s.name for s in (a, b) if knob not in s.capabilities)


def convention_lines(a: Side, b: Side) -> list[str]:
    """Epsilon placement, zero-debias and the decay schedule: shared, choosable, or impossible."""
    lines = []
    for knob in ("epsilon_modes", "zero_debias", "num_updates_schedule"):
        if knob not in a.capabilities or knob not in b.capabilities:
            lines.append(f"{KNOB_NAMES[knob]}: not declared by {_undeclared(a, b, knob)}")
            continue
        (va, ca), (vb, cb) = (convention_values(s.capabilities[knob], knob) for s in (a, b))
        lines.append(_convention_line(knob, a, b, va, vb))
        lines += [f"{KNOB_NAMES[knob]}, conditional: {s.name} uses {c}" for s, cs in ((a, ca), (b, cb)) for c in cs]
    return lines


def _convention_line(knob: str, a: Side, b: Side, va: set, vb: set) -> str:
    name = KNOB_NAMES[knob]
    if va == vb and len(va) == 1:
        return f"{name}: both use {_words(knob, va)}"
    if va <= vb:
        return f"{name}: {b.name} can use {_words(knob, va)} like {a.name}" + ("" if va == vb else ": choose it")
    if va & vb:
        return f"{name}: {a.name} may use {_words(knob, va)}; {b.name} only {_words(knob, vb)}: keep {a.name} on that"
    return (f"{name}: {a.name} uses {_words(knob, va)}, {b.name} always {_words(knob, vb)}: no setting matches; "
            f"{CONSEQUENCES[knob]}")


def structural_lines(a: Side, b: Side) -> list[str]:
    """Every other capability whose described values differ: what only one side can express."""
    lines = []
    for knob in sorted((a.capabilities.keys() | b.capabilities.keys()) - set(CONVENTIONS)):
        ta, tb = a.capabilities.get(knob), b.capabilities.get(knob)
        if ta == tb:
            continue
        if ta is None or tb is None:
            lines.append(f"{knob}: not declared by {a.name if ta is None else b.name}")
            continue
        sep = LIST_SEPARATORS.get(knob, ", ")
        only_a = [v for v in ta.split(sep) if v not in tb.split(sep)]
        only_b = [v for v in tb.split(sep) if v not in ta.split(sep)]
        lines.append(f"{knob}: only {a.name}: {sep.join(only_a) or '-'} | only {b.name}: {sep.join(only_b) or '-'}")
    if any(line.startswith("dtypes") for line in lines):
        lines.append("dtypes: 'x/y' means x inputs with y parameters and running statistics (mixed precision)")
    return lines


def translation(a: Side, b: Side) -> list[str]:
    parts = (ema_lines, epsilon_lines, variance_lines, convention_lines, structural_lines)
    return [line for part in parts for line in part(a, b)]


# --- Part 2: the measured differences ----------------------------------------------------------
