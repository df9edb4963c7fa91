"""reports/conformance.md: one page a porter reads, at most MAX_LINES lines for all backends.

Order: title, the summary line (framework defects counted apart from unexpected failures), the
run header with every framework version, the heatmap, the measured semantics profile, the
findings ranked by harm, the status matrix, the capability table, links. Everything per cell
(reasons, applies-to texts, explanations) is in conformance-details.md.
"""

from __future__ import annotations

import collections

from ..profile import ROWS, build_profile
from .common import LEGEND, count_text, families, matrix_rows, unavailable_adapters
from .findings import findings, summary_line, unexpected, unexpected_line

MAX_LINES = 300
CAPABILITY_COLUMNS = (("epsilon_modes", "epsilon placement"), ("running_variance", "running variance"),
                      ("zero_debias", "zero-debias"), ("num_updates_schedule", "decay schedule"),
                      ("running_rules", "rules"), ("ranks", "ranks"), ("channel_positions", "channel axis"),
                      ("step_kinds", "steps"), ("separate_scale_center", "scale ⟂ center"), ("dtypes", "dtypes"),
                      ("extensions", "extensions"))


def render(document: dict) -> str:
    """The main page; findings fill what the other sections leave of MAX_LINES."""
    head = _title(document) + _header(document)
    tail = _matrix(document) + _capabilities(document) + _links()
    profile = _profile(document)
    room = MAX_LINES - len(head) - len(profile) - len(tail)
    return "\n".join(head + profile + _findings(document, room) + tail).rstrip() + "\n"


def _title(document: dict) -> list[str]:
    return ["# bnconform conformance report", "", summary_line(document), ""]


def _header(document: dict) -> list[str]:
    """Where it ran, every framework version (backends grouped by framework), what could not run."""
    verdicts = document["verdicts"]
    lines = [f"- Run {r['date']} on `{r['platform']}`, Python {r['python']}, bnconform {r['bnconform']}"
             + (f"; selection {r['selection']}" if r.get("selection") else "") for r in document["runs"]]
    versions = collections.defaultdict(list)
    for name, meta in sorted(document["adapters"].items()):
        versions[(meta.get("framework") or name, meta.get("version", "?"))].append(name)
    lines.append("- Frameworks: " + " · ".join(f"{fw} {ver} ({', '.join(names)})"
                                                for (fw, ver), names in sorted(versions.items())))
    absent = unavailable_adapters(document)
    lines.append(f"- {len({v['case'] for v in verdicts})} cases × {len(document['adapters'])} backends = "
                 f"{len(verdicts)} cells" + (f"; not runnable here: {', '.join(absent)} (reasons in the details)"
                                             if absent else ""))
    return lines + ["", "![verdicts per backend and family](heatmap.svg)", ""]


def _profile(document: dict) -> list[str]:
    """backend rows x profile columns; italics: declared by the adapter, not measured this run."""
    profile = build_profile(document)
    lines = ["## Semantics profile (measured)", "",
             "Each value is derived from this run's verdicts (evidence case ids in the details page); "
             "*italics*: declared capability, no case ran.", ""]
    for title, keys in _profile_tables():
        lines += [f"**{title}**", "", "| backend | " + " | ".join(dict(ROWS)[k] for k in keys) + " |",
                  "|---" * (len(keys) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(_cell_text(row[k]) for k in keys) + " |" for name, row in profile.items()]
        lines.append("")
    return lines


def _profile_tables() -> list[tuple[str, list[str]]]:
    """The profile in two tables that fit a page: the forward facts, then gradients and replicas."""
    later = [k for k, _ in ROWS if k.endswith("_gradient") or k.startswith("replica_")]
    return [("Forward pass and running statistics", [k for k, _ in ROWS if k not in later]),
            ("Gradients and cross-replica statistics", later)]


def _cell_text(cell) -> str:
    text = cell.value.replace("|", "\\|")
    return text if cell.status == "measured" else f"*{text}*"


def _findings(document: dict, room: int) -> list[str]:
    """Unexpected cells (all of them if there is room), then findings by harm; what does not fit
    is counted and left to the details page."""
    lines = ["## Findings", "", "Ranked by harm: defect, precision, dtype, edge. Reproduce one cell with the "
             "command shown; behaviour and link are the adapter's declaration, re-verified this run.", ""]
    bad, found = unexpected(document), findings(document)
    if bad:
        lines += [f"### Unexpected failures ({len(bad)})", ""]
    items = [unexpected_line(v) for v in bad] + [f.line() for f in found]
    fits = max(room - len(lines) - 2, 0)
    lines += items[:fits]
    if len(items) > fits:
        lines.append(f"- … {len(items) - fits} more in [conformance-details.md](conformance-details.md)")
    if not items:
        lines.append("- none: every cell that ran agrees with the oracle")
    return lines + [""]


def _matrix(document: dict) -> list[str]:
    cols = families(document)
    lines = ["## Matrix", "", LEGEND, "", "| backend | " + " | ".join(cols) + " | all |", "|---" * (len(cols) + 2) + "|"]
    for label, verdicts in matrix_rows(document).items():
        cells = [count_text([v for v in verdicts if v["family"] == f]) for f in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {count_text(verdicts)} |")
    return lines + [""]


def _capabilities(document: dict) -> list[str]:
    """What each API can express (declared; the judge derives 'unsupported' from it)."""
    lines = ["## Capabilities (declared)", "",
             "| backend | " + " | ".join(t for _, t in CAPABILITY_COLUMNS) + " |", "|---" * (len(CAPABILITY_COLUMNS) + 1) + "|"]
    for name, meta in sorted(document["adapters"].items()):
        caps = meta.get("capabilities") or {}
        lines.append(f"| {name} | " + " | ".join(_short(caps.get(k, "?")) for k, _ in CAPABILITY_COLUMNS) + " |")
    return lines + [""]


def _short(text: str) -> str:
    """Capability texts, compressed for a table cell (the words come from capabilities.VALUE_WORDS)."""
    for long, short in (("a Bessel-corrected running variance", "Bessel"), ("a biased running variance", "biased"),
                        ("a plain EMA without zero-debiasing", "off"), ("zero-debiased running statistics", "on"),
                        ("the num_updates decay schedule", "num_updates"), ("a constant decay", "constant"),
                        ("eps inside the square root", "inside"), ("eps outside the square root", "outside"),
                        ("max(var, eps) inside the square root", "max"),
                        ("batch statistics with an update (training)", "train"),
                        ("running statistics without an update (inference)", "eval"),
                        ("batch statistics without an update", "batch, no update"),
                        ("running statistics with an update", "running + update")):
        text = text.replace(long, short)
    return text.replace("|", "\\|")


def _links() -> list[str]:
    return ["## More", "",
            "- [conformance-details.md](conformance-details.md): per backend every deviation (applies to, explanation, "
            "link), every fail, error and unsupported reason, and the profile's evidence",
            "- [results.json](results.json): every cell, machine-readable (`bnconform report` re-renders it)",
            "- [docs/semantics.md](../docs/semantics.md): the canonical model; [README](../README.md): verdicts"]
