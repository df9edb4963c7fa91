"""Stage 4, case specs and generation: where every case file comes from.

Owns the case specifications (one module per family: formulas, epsilon, momentum, degenerate,
renorm, ghost, weighted, gradients, replicas; their convention twins in :mod:`.mirrors`),
writing and checking ``cases/`` from them (:mod:`.generate`, ``bnconform generate``), and cases
written by hand from a readable description (:mod:`.authoring`, ``bnconform new`` / ``show``).
May import: case format, reference, judging (the comparison that tells twins apart).

The building blocks (:class:`Spec`, :func:`build`, the step kinds, the input makers) are in
:mod:`.spec` and importable from here: ``from bnconform.specs import Spec, build, TRAIN``.
"""

from __future__ import annotations

from typing import Sequence

from .spec import (EVAL, EVAL_UPDATE, TRAIN, TRAIN_NO_UPDATE, Spec, build, drawn, fixed, gap, normal,  # noqa: F401
                   per_step)

FAMILIES = ("formulas", "epsilon", "momentum", "degenerate", "renorm", "ghost", "weighted", "gradients", "replicas")


def all_specs(families: Sequence[str] = FAMILIES) -> list[Spec]:
    """Every spec of the named families, in a stable order; each family of MIRRORED_FAMILIES is
    followed by its running-variance mirrors, and the momentum family by zero-debiased twins of its
    plain-EMA sequences (see :mod:`bnconform.specs.mirrors`)."""
    from . import degenerate, epsilon, formulas, ghost, gradients, momentum, renorm, replicas, weighted
    from .mirrors import (MIRRORED_FAMILIES, ZERO_DEBIAS_FAMILIES, ZERO_DEBIAS_ONLY_VARIANCE, variance_mirrors,
                          zero_debias_mirrors)

    modules = {"formulas": formulas, "epsilon": epsilon, "momentum": momentum, "degenerate": degenerate,
               "renorm": renorm, "ghost": ghost, "weighted": weighted, "gradients": gradients, "replicas": replicas}
    found = []
    for family in families:
        specs = list(modules[family].specs())
        specs += variance_mirrors(specs) if family in MIRRORED_FAMILIES else []
        kind = ZERO_DEBIAS_ONLY_VARIANCE.get(family)
        debiased = [s for s in specs if kind is None or s.config.running_stats.variance == kind]
        found += specs + (zero_debias_mirrors(debiased) if family in ZERO_DEBIAS_FAMILIES else [])
    return found
