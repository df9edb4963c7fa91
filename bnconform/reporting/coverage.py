"""How much of the suite each backend was judged on: a reported number, not an impression.

A *behaviour* is a case id with its convention twins folded together: the generator writes a
case's ``_biased``, ``_zero_debias`` and ``_biased_zero_debias`` twins where its results depend on
those conventions (bnconform.specs.mirrors), and a backend with either convention is judged by the
twin it can express, so the four ids pin down one behaviour. A backend has *judged* a behaviour
when at least one of its cells there (any twin, any device) is pass, deviation or fail: the
framework ran and its results were compared. Unsupported, unavailable and error cells judge nothing.

Per backend: ``judged`` / ``behaviours`` (every behaviour among the document's cases), and the
output groups its judged cells never compared (``never_observed``): y, batch moments, running
statistics, gradients, replicas, each only where some case of the suite expects it.
"""

from __future__ import annotations

import collections
import re

JUDGED = ("pass", "deviation", "fail")
_TWIN = re.compile(r"(_biased_zero_debias|_zero_debias|_biased)$")
OUTPUT_GROUPS = {"y": ("y",), "batch moments": ("batch_mean", "batch_var"),
                 "running statistics": ("running_mean", "running_var"), "gradients": ("dx", "dgamma", "dbeta"),
                 "replicas": ("replicas",)}


def behaviour(case_id: str) -> str:
    """The case id without its convention-twin suffix."""
    return _TWIN.sub("", case_id)


def coverage(document: dict) -> dict[str, dict]:
    """adapter -> {"judged": n, "behaviours": N, "never_observed": [group, ...]} over the document."""
    verdicts = document["verdicts"]
    everything = {behaviour(v["case"]) for v in verdicts}
    expected = _groups_expected(verdicts)
    judged, observed = collections.defaultdict(set), collections.defaultdict(set)
    for v in verdicts:
        if v["status"] in JUDGED:
            judged[v["adapter"]].add(behaviour(v["case"]))
            observed[v["adapter"]].update(v.get("compared") or [])
    return {name: {"judged": len(judged[name]), "behaviours": len(everything),
                   "never_observed": [group for group, keys in OUTPUT_GROUPS.items()
                                      if group in expected and not observed[name] & set(keys)]}
            for name in sorted({v["adapter"] for v in verdicts})}


def _groups_expected(verdicts) -> set[str]:
    """The output groups some cell of the document compared or could not observe (what the suite
    expects somewhere)."""
    seen = {key for v in verdicts for key in [*(v.get("compared") or []), *(v.get("unobserved") or [])]}
    return {group for group, keys in OUTPUT_GROUPS.items() if seen & set(keys)}


def coverage_line(document: dict) -> str:
    """One line for the first screen: every backend's behaviours judged, fewest first."""
    table = coverage(document)
    if not table:
        return "- Coverage: no backend ran"
    total = next(iter(table.values()))["behaviours"]
    parts = [f"{name} {c['judged']}" + (f" (never {', '.join(c['never_observed'])})" if c["never_observed"]
                                        and c["judged"] else "")
             for name, c in sorted(table.items(), key=lambda kv: (kv[1]["judged"], kv[0]))]
    return (f"- Coverage, behaviours judged of {total} (a case and its convention twins; pass, deviation or "
            f"fail on at least one; docs/report.md): " + " · ".join(parts))
