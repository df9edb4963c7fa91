"""The main page's porting table: for the most common pairs of backends, the momentum translation,
the default epsilons, the running-variance rescale (per code path where a side switches) and what
one value per channel (N = 1) does on each side.

Formatted from :mod:`.translation`, the facts ``bnconform port FROM TO`` words as lines, so the
table and the command cannot disagree; N = 1 is the semantics profile's measured row. Which
backends are "common" is a choice of presentation (the names below), never a fact about them: a
name absent from the document, or not runnable here, is said to be so in its rows.
"""

from __future__ import annotations

import itertools

from .translation import (
    Side,
    VariancePath,
    epsilon,
    momentum,
    number,
    side_of,
    variance_paths,
)

COMMON = ("torch.nn", "keras3.tensorflow", "tf_keras.auto", "flax.linen", "paddle.nn")
WEIGHS = {"new": "new batch", "old": "old statistic"}
SHORT_KINDS = {"bessel": "Bessel", "biased": "biased"}  # the canonical model's variance kinds
MARKERS = "abcdefghij"
INTRO = ("From the adapters' declarations and this run's verdicts: the same facts `bnconform port FROM TO` prints, "
         "followed there by every measured difference. *TO × N/(N-1)*: after training in TO, multiply its moving "
         "variance by N/(N-1) to get FROM's value (N: values per channel in one training batch, batch size × spatial "
         "positions); imported weights need no rescale.")
OTHER_PAIRS = ("- Every other pair, and the measured differences of these: `bnconform port FROM TO` (it reads "
               "reports/results.json, or runs the two backends)")


def render_porting(document: dict, profile: dict, absent: dict[str, str]) -> list[str]:
    """The section: intro, the table (one row per pair of COMMON, in that order), the path
    footnotes, then the command for every other pair. ``profile``: build_profile's result;
    ``absent``: backend -> why it could not run here. A document holding fewer than two of them
    (a partial run) gets one line instead of a table of absences."""
    present = [n for n in COMMON if n in document.get("adapters", {})]
    if len(present) < 2:
        return ["## Porting between common backends", "",
                f"- This document holds {', '.join(present) or 'none'} of {', '.join(COMMON)}: no pair to show",
                OTHER_PAIRS, ""]
    notes: dict[tuple, str] = {}
    rows = [_row(document, profile, absent, a, b, notes) for a, b in itertools.combinations(COMMON, 2)]
    lines = ["## Porting between common backends", "", INTRO, "",
             "| FROM → TO | momentum | epsilon default | running variance | one value per channel (N = 1, training) |",
             "|---|---|---|---|---|"] + rows + [""]
    lines += [f"- ({marker}) {owner}: {condition}" for (owner, condition), marker in notes.items()]
    return lines + [OTHER_PAIRS, ""]


def _row(document: dict, profile: dict, absent: dict, a: str, b: str, notes: dict) -> str:
    missing = [n for n in (a, b) if n not in document.get("adapters", {})]
    if missing:
        return f"| {a} → {b} | {' and '.join(missing)}: not in this document | — | — | — |"
    sa, sb = side_of(document, a), side_of(document, b)
    gone = [n for n in (a, b) if n in absent]
    label = f"{a} → {b}" + (f" ({', '.join(gone)} not runnable here: see above)" if gone else "")
    cells = (_momentum(sa, sb), _epsilon(sa, sb), _variance(sa, sb, notes), _batch_of_one(profile, absent, a, b))
    return f"| {label} | " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _momentum(a: Side, b: Side) -> str:
    """E.g. "`momentum`=0.1 → `momentum`=0.9 (new batch → old statistic); TO's default 0.99: pass 0.9"."""
    fact = momentum(a, b)
    if fact is None:
        return f"no EMA knob declared by {' and '.join(s.name for s in (a, b) if s.decay_parameter is None)}"
    (pa, wa), (pb, wb) = a.decay_parameter, b.decay_parameter
    weights = f"({WEIGHS[wa]} → {WEIGHS[wb]})"
    if fact.source is None:
        rule = f"TO's `{pb}` = 1 − FROM's `{pa}`" if fact.flip else f"TO's `{pb}` = FROM's `{pa}`"
        return f"{rule} {weights}; FROM's default not recorded"
    value = f"`{pa}`={number(fact.source)} → `{pb}`={number(fact.wanted)} {weights}"
    if fact.target_default_fits:
        return f"{value}; also TO's default"
    if fact.target_default is None:
        return f"{value}; TO's default not recorded: pass {number(fact.wanted)}"
    return f"{value}; TO's default {number(fact.target_default)}: pass {number(fact.wanted)}"


def _epsilon(a: Side, b: Side) -> str:
    fact = epsilon(a, b)
    if fact.same:
        return f"{number(fact.source)} in both"
    if fact.source is None and fact.target is None:
        return "defaults not recorded: pass the model's epsilon"
    shown = [number(v) if v is not None else "default not recorded" for v in (fact.source, fact.target)]
    advice = f": pass {number(fact.source)}" if fact.source is not None else ": pass the model's epsilon"
    return f"{shown[0]} → {shown[1]}{advice}"


def _variance(a: Side, b: Side, notes: dict) -> str:
    """One rule, or one per code path: a path whose condition holds is a footnote marker."""
    paths = variance_paths(a, b)
    if paths is None:
        return f"not declared by {' and '.join(s.name for s in (a, b) if 'running_variance' not in s.capabilities)}"
    if len(paths) == 1:
        return _rule(paths[0])
    return "; ".join(f"{_where(path, notes)}: {_rule(path)}" for path in paths)


def _where(path: VariancePath, notes: dict) -> str:
    held = [(owner, condition) for owner, condition, holds in path.conditions if holds]
    for key in held:
        notes.setdefault(key, MARKERS[len(notes) % len(MARKERS)])
    return " and ".join(f"path ({notes[key]})" for key in held) or "other inputs"


def _rule(path: VariancePath) -> str:
    words = lambda kinds: " or ".join(SHORT_KINDS.get(k, str(k)) for k in sorted(kinds, key=str))
    if path.shared:
        return f"both {words(path.shared)}: no rescale"
    rule = f"{words(path.kinds_a)} → {words(path.kinds_b)}"
    return f"{rule}: TO × {path.factor}" if path.factor else rule


def _batch_of_one(profile: dict, absent: dict, a: str, b: str) -> str:
    """Each side's measured N = 1 behaviour (the profile's row), or why there is none."""
    shown = []
    for name in (a, b):
        cell = profile.get(name, {}).get("batch_of_one")
        if name in absent or cell is None:
            shown.append(f"{name}: not run here")
        else:
            shown.append(f"{name}: {cell.value}" + ("" if cell.status == "measured" else " (declared, not measured)"))
    return " · ".join(shown)
