"""The parameter translation of ``bnconform port``: how each knob is spelled on each side.

The facts (EMA knob and value, default epsilons, the running-variance kind per code path) are
computed by :mod:`bnconform.reporting.pages.translation` from the adapters' metadata in a
results document -- the main page's porting table formats the same facts, so the two cannot
disagree; this module words them as lines. Never typed per pair of frameworks: the EMA value
that keeps FROM's decay d is ``1 - d`` or ``d`` in TO's spelling, a default epsilon that differs
is stated, and a Bessel-vs-biased running variance differs by the factor N/(N-1), N the values
per channel in a training batch -- per code path where a side switches its convention with the
path. :mod:`.port` adds the measured differences and the command.
"""

from __future__ import annotations

from ..judging.capabilities import CONVENTIONS, VALUE_WORDS
from ..reporting.pages.translation import (
    WEIGHS,
    Side,
    convention_values,
    epsilon,
    kind_words,
    momentum,
    number,
    path_evidence,
    variance_paths,
)

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
RESCALE_NOTE = ("N is the number of values per channel in one training batch (batch size x spatial positions); "
                "weights imported from {a} need no rescale for inference (the stored value is used as is)")


# --- Part 1: the parameter translation ---------------------------------------------------------

def ema_lines(a: Side, b: Side) -> list[str]:
    """TO's EMA value for FROM's decay: value = 1 - decay when a side weighs the new batch."""
    fact = momentum(a, b)
    if fact is None:
        missing = " and ".join(s.name for s in (a, b) if s.decay_parameter is None)
        return [f"momentum: {missing} declares no EMA knob (decay_parameter is None): nothing to translate"]
    (pa, wa), (pb, wb) = a.decay_parameter, b.decay_parameter
    flip = "1 - " if fact.flip else ""
    lines = [f"momentum: {b.name} {pb} = {flip}{a.name} {pa} ({a.name}: {WEIGHS[wa]}; {b.name}: {WEIGHS[wb]})"]
    if fact.source is not None:
        line = (f"momentum: {a.name} {pa}={number(fact.source)} ({WEIGHS[wa]}) -> "
                f"{b.name} {pb}={number(fact.wanted)} ({WEIGHS[wb]})")
        lines.append(line + _explicit(fact, pb))
    elif "decay_parameter" in a.defaults:
        lines.append(f"momentum: {a.name} has no default {pa} ({a.defaults['decay_parameter']!r}): translate the "
                     "value the model uses")
    return lines


def _explicit(fact, spelled: str) -> str:
    """'; TO's default is x: pass name=y explicitly' when TO's own default is not what is wanted."""
    if fact.target_default is None:
        return f"; pass {spelled}={number(fact.wanted)} explicitly"
    if fact.target_default_fits:
        return f" (also {fact.b.name}'s default)"
    return (f"; {fact.b.name}'s default is {spelled}={number(fact.target_default)}: "
            f"pass {spelled}={number(fact.wanted)} explicitly")


def epsilon_lines(a: Side, b: Side) -> list[str]:
    """Epsilon defaults: TO must be given FROM's default explicitly when they differ."""
    fact = epsilon(a, b)
    if fact.source is None:
        return [f"epsilon: {a.name}'s default epsilon is not known here: pass the model's epsilon explicitly"]
    if fact.same:
        return [f"epsilon: eps default {number(fact.source)} in both: nothing to pass"]
    shown = number(fact.target) if fact.target is not None else "unknown"
    return [(f"epsilon: {a.name} eps default {number(fact.source)} -> {b.name} eps default {shown}: "
             f"pass epsilon={number(fact.source)} explicitly")]


def variance_lines(a: Side, b: Side) -> list[str]:
    """The N/(N-1) rescale between a Bessel-corrected and a biased running variance; where a side
    keeps another kind on another code path, one line per path (which inputs take it, what to do
    there, what this run measured of it), never one instruction with an exception after it."""
    paths = variance_paths(a, b)
    if paths is None:
        return [f"running variance: not declared by {_undeclared(a, b, 'running_variance')}"]
    if len(paths) == 1:
        line = _variance_rule(a, b, paths[0])
        return [f"running variance: {line}" + (f"; {RESCALE_NOTE.format(a=a.name)}" if paths[0].factor else "")]
    owners = list(dict.fromkeys(n for p in paths for n in p.owners()))
    verb = "take" if len(owners) > 1 else "takes"
    lines = [f"running variance: depends on the code path {' and '.join(owners)} {verb} ({len(paths)} paths, by input):"]
    shown = set()  # with two switching sides, a side's path recurs: its evidence is printed once
    for path in paths:
        lines.append(f"  {path.label(named=len(owners) > 1)}: {_variance_rule(a, b, path)}")
        found = [path_evidence(s, path, k) for s, k in ((a, path.kinds_a), (b, path.kinds_b))]
        evidence = "; ".join(e for e in found if e and e not in shown)
        shown.update(found)
        lines += [f"    measured: {evidence}"] if evidence else []
    if any(p.factor for p in paths):
        lines.append(f"  {RESCALE_NOTE.format(a=a.name)}")
    return lines


def _variance_rule(a: Side, b: Side, path) -> str:
    """What to do on one path: nothing (a kind both keep), the rescale, or what each keeps."""
    if path.shared:
        return f"both keep a {kind_words(path.shared)} running variance: no rescale"
    kind_a, kind_b = kind_words(path.kinds_a), kind_words(path.kinds_b)
    if path.factor:
        return (f"{a.name} keeps a {kind_a} running variance, {b.name} a {kind_b} one: after training in {b.name}, "
                f"multiply its moving variance by {path.factor} to get {a.name}'s value")
    return f"{a.name} keeps a {kind_a} running variance, {b.name} a {kind_b} one"


def _words(knob: str, values) -> str:
    return " or ".join(VALUE_WORDS[knob][v].split(" (")[0] for v in sorted(values, key=str)) or "nothing declared"


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


# --- Part 1b: what an exported graph holds --------------------------------------------------------

def ported_config(a: Side):
    """The canonical knobs of a layer built with FROM's defaults (its EMA value read as a decay
    through its ``decay_parameter``; decay 0.9 and epsilon 1e-5 where the document records none)."""
    from ..caseformat.model import Config, RunningStats

    value, decay = a.defaults.get("decay_parameter"), 0.9
    if a.decay_parameter is not None and _is_number(value):
        decay = 1 - float(value) if a.decay_parameter[1] == "new" else float(value)
    epsilon = a.defaults.get("epsilon")
    epsilon = float(epsilon) if _is_number(epsilon) else 1e-5
    return Config(channel_axis=1, epsilon=epsilon, running_stats=RunningStats(decay=decay))


def _exporter(name: str):
    """The adapter class's ``exported_parameters(config) -> {label: {parameter: value}}`` hook, if it has one."""
    from ..adapters.registry import RegistryError, resolve

    try:
        return getattr(resolve(name), "exported_parameters", None)
    except RegistryError:
        return None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _convention(side: Side, written, decay: float) -> str:
    """' (momentum=0.9 is the weight on the old statistic, as <side> declares)': which statistic a
    written EMA value weighs, read against the decay it was built from ('' when it cannot tell)."""
    weighs = [w for w, value in (("old", decay), ("new", 1 - decay)) if _is_number(written) and abs(written - value) <= 1e-6]
    if len(weighs) != 1:  # no EMA value written, or decay 0.5 (both readings agree)
        return ""
    spelled = side.decay_parameter[0] if side.decay_parameter else "momentum"
    text = f" ({spelled}={number(written)} is the {WEIGHS[weighs[0]]}"
    if side.decay_parameter is None:
        return text + ")"
    if side.decay_parameter[1] == weighs[0]:
        return text + f", as {side.name}'s decay_parameter declares)"
    return text + f"; {side.name}'s decay_parameter says the {WEIGHS[side.decay_parameter[1]]}: they disagree)"


def exported_lines(a: Side, b: Side) -> list[str]:
    """For each side whose adapter writes the model into another graph (an ``exported_parameters``
    classmethod), the parameters that graph holds for a layer built with FROM's defaults, and
    which statistic its written momentum weighs; [] when neither side exports."""
    config, lines = ported_config(a), []
    decay = config.running_stats.decay
    for side in (a, b):
        hook = _exporter(side.name)
        if hook is None:
            continue
        try:
            found = hook(config)
        except Exception as exc:  # noqa: BLE001 - a missing exporter or runtime: say so, keep the report
            lines.append(f"{side.name}: not exported here ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
            continue
        for label, values in found.items():
            shown = ", ".join(f"{key}={number(v) if isinstance(v, float) else v}" for key, v in values.items())
            lines.append(f"{side.name} {label}: {shown}" + _convention(side, values.get("momentum"), decay))
    if lines:
        lines.insert(0, f"for a layer with {a.name}'s defaults (decay {number(decay)}, epsilon {number(config.epsilon)}):")
    return lines
