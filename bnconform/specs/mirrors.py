"""Running-variance mirrors: the other-kind twin of every case whose results depend on the kind.

Frameworks fix the running-variance convention (torch keeps a Bessel-corrected one, ONNX
BatchNormalization a biased one). A framework can only run a case in its own kind, or one whose
expected results do not depend on the kind (bnconform.judging.capabilities). So every formulas,
epsilon, momentum, degenerate and gradients case whose expectations change when ``running_stats.variance`` is
flipped gets a twin with the other kind: the same inputs and state (drawn from the original's
seed), the same steps, only the variance kind flipped.

"Depends on the kind" is the capabilities criterion: the twin's expected results and the
original's differ beyond the tolerances (checked with either case's tolerances). A twin whose
name already exists (e.g. momentum/decay_0.9_biased_3steps) is not generated again.
"""

from __future__ import annotations

import re
from dataclasses import replace

from .spec import build, gap

MIRRORED_FAMILIES = ("formulas", "epsilon", "momentum", "degenerate", "gradients", "replicas")
ZERO_DEBIAS_FAMILIES = ("momentum", "degenerate", "gradients", "replicas")  # haiku and equinox always zero-debias: their convention needs EMA cases too
# families whose zero-debias twins are made only of the specs with this running-variance kind (the
# frameworks that always zero-debias, haiku and equinox, keep a biased one), not of every spec
ZERO_DEBIAS_ONLY_VARIANCE = {"degenerate": "biased", "gradients": "biased", "replicas": "biased"}
OTHER_KIND = {"bessel": "biased", "biased": "bessel"}
KIND_WORDS = {"bessel": "a Bessel-corrected running variance (N/(N-1))",
              "biased": "a biased running variance (divide by N)"}


def mirror_name(name: str, kind: str) -> str:
    """The twin's name: "bessel" <-> "biased" swapped where the name says the kind, else
    ``_<other kind>`` appended (``kind`` is the original's)."""
    if re.search("bessel|biased", name):
        return re.sub("bessel|biased", lambda m: OTHER_KIND[m.group(0)], name)
    return f"{name}_{OTHER_KIND[kind]}"


def mirror_spec(spec):
    """The spec of ``spec``'s other-kind twin: same seed, inputs and steps, variance flipped."""
    kind = spec.config.running_stats.variance
    config = spec.config.with_running(variance=OTHER_KIND[kind])
    return replace(spec, name=mirror_name(spec.name, kind), config=config, seed_id=spec.id,
                   description=_describer(spec, kind))


def _describer(original, kind: str):
    """Description of the twin, quoting how far the original's kind lands on it."""
    def describe(case) -> str:
        wrong = original.config
        text = (f"Other-kind twin of {original.id}: the same inputs, state and steps with "
                f"{KIND_WORDS[OTHER_KIND[kind]]} instead of {KIND_WORDS[kind]}. Keeping {KIND_WORDS[kind]} "
                f"puts running_var off by up to {gap(case, 'running_var', config=wrong):.3g}")
        y_gap = gap(case, "y", config=wrong)
        return text + (f" and y by up to {y_gap:.3g}." if y_gap else ".")
    return describe


def depends_on_kind(original_case, twin_case) -> bool:
    """The two cases' expected results differ beyond either case's tolerances."""
    from ..judging.compare import compare_case

    ours = [s.expected for s in original_case.steps]
    theirs = [s.expected for s in twin_case.steps]
    return bool(compare_case(original_case, theirs)[0] or compare_case(twin_case, ours)[0])


def variance_mirrors(specs) -> list:
    """The twins of ``specs`` (one family) whose results depend on the kind, in spec order."""
    names, twins = {s.name for s in specs}, []
    for spec in specs:
        if spec.make_weights is not None:
            continue  # weighted moments have no Bessel variance: the twin would be invalid
        twin = mirror_spec(spec)
        if twin.name not in names and depends_on_kind(build(spec), build(twin)):
            twins.append(twin)
            names.add(twin.name)
    return twins


def zero_debias_spec(spec):
    """The zero-debiased twin of a plain-EMA spec: same seed, inputs and steps, zero_debias on."""
    config = spec.config.with_running(zero_debias=True)
    return replace(spec, name=f"{spec.name}_zero_debias", config=config, seed_id=spec.seed_id or spec.id,
                   description=_zero_debias_describer(spec))


def _zero_debias_describer(original):
    def describe(case) -> str:
        return (f"Zero-debiased twin of {original.id}: the same inputs, state and steps with the EMA "
                f"accumulator starting at 0 and divided by 1 - decay^t (haiku's and TF's zero_debias). A plain "
                f"EMA from the initial state puts running_mean off by up to "
                f"{gap(case, 'running_mean', config=original.config):.3g}.")
    return describe


def _can_zero_debias(spec) -> bool:
    rs = spec.config.running_stats
    return (rs.rule == "ema" and not rs.zero_debias and not rs.num_updates_schedule and rs.decay is not None
            and 0.0 < rs.decay < 1.0 and spec.num_updates == 0 and spec.config.renorm is None)


def zero_debias_mirrors(specs) -> list:
    """Zero-debiased twins of the plain-EMA specs whose results depend on it, in spec order."""
    names, twins = {s.name for s in specs}, []
    for spec in specs:
        if not _can_zero_debias(spec):
            continue
        twin = zero_debias_spec(spec)
        if twin.name not in names and depends_on_kind(build(spec), build(twin)):
            twins.append(twin)
            names.add(twin.name)
    return twins
