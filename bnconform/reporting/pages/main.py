"""reports/conformance.md: one page a porter reads, at most MAX_LINES lines for all backends.

Order: title, the summary line (framework defects counted apart from unexpected failures), the
run header with every framework version and every backend that could not run here (with its
fix), the porting table of the common pairs, the heatmap, the measured semantics profile (long
deviation behaviours as codes explained under each table), the findings ranked by harm, the
status matrix, the capability table, links. Everything per cell (reasons, applies-to texts,
explanations) is in conformance-details.md.
"""

from __future__ import annotations

import collections

from ..coverage import coverage_line
from ..profile import ROWS, build_profile
from .common import CATEGORIES, LEGEND, SYMBOL, count_text, families, matrix_rows, not_runnable, why_and_fix
from .findings import findings, summary_line, unexpected, unexpected_line
from .porting import render_porting

MAX_LINES = 300
CAPABILITY_COLUMNS = (("epsilon_modes", "epsilon placement"), ("running_variance", "running variance"),
                      ("zero_debias", "zero-debias"), ("num_updates_schedule", "decay schedule"),
                      ("running_rules", "rules"), ("ranks", "ranks"), ("channel_positions", "channel axis"),
                      ("step_kinds", "steps"), ("separate_scale_center", "scale ⟂ center"), ("dtypes", "dtypes"),
                      ("extensions", "extensions"))


def render(document: dict) -> str:
    """The main page; findings fill what the other sections leave of MAX_LINES."""
    built, absent = build_profile(document), not_runnable(document)
    head = _title(document) + _header(document, absent) + render_porting(document, built, absent) + _heatmap()
    tail = _matrix(document) + _capabilities(document) + _links()
    profile = _profile(built)
    room = MAX_LINES - len(head) - len(profile) - len(tail)
    return "\n".join(head + profile + _findings(document, room) + tail).rstrip() + "\n"


def _title(document: dict) -> list[str]:
    return ["# bnconform conformance report", "", summary_line(document), ""]


def _header(document: dict, absent: dict[str, str]) -> list[str]:
    """Where it ran, every framework version (backends grouped by framework), what could not run
    here and how to fix it."""
    verdicts = document["verdicts"]
    lines = [f"- Run {r['date']} on `{r['platform']}`, Python {r['python']}, bnconform {r['bnconform']}"
             + (f"; selection {r['selection']}" if r.get("selection") else "") for r in document["runs"]]
    versions = collections.defaultdict(list)
    for name, meta in sorted(document["adapters"].items()):
        versions[(meta.get("framework") or name, meta.get("version", "?"))].append(name)
    lines.append("- Frameworks: " + " · ".join(f"{fw} {ver} ({', '.join(names)})"
                                                for (fw, ver), names in sorted(versions.items())))
    lines.append(f"- {len({v['case'] for v in verdicts})} cases × {len(document['adapters'])} backends = "
                 f"{len(verdicts)} cells")
    return lines + _modes(document) + [coverage_line(document)] + _absent(absent) + [""]


def _modes(document: dict) -> list[str]:
    """One line naming the rows that do not run eagerly, by mode, each with the eager row it
    transforms (the rows sort side by side: ``torch.nn``, ``torch.nn+compile``)."""
    by_mode = collections.defaultdict(list)
    for name, meta in sorted(document["adapters"].items()):
        if meta.get("mode", "eager") != "eager":
            by_mode[meta["mode"]].append(f"{name} (of {meta.get('eager_row') or '?'})")
    if not by_mode:
        return []
    return ["- Execution modes beside eager: " + " · ".join(f"{mode}: {', '.join(rows)}"
                                                          for mode, rows in sorted(by_mode.items()))]


def _absent(absent: dict[str, str]) -> list[str]:
    """One line per backend that could not run here: why, and the fix its reason names."""
    if not absent:
        return []
    lines = [f"- **Not runnable here ({len(absent)})**, with the fix (full reasons in the details):"]
    for name, reason in absent.items():
        why, fix = why_and_fix(reason)
        lines.append(f"  - {name}: {why}" + (f" · fix: {fix}" if fix else " · no install fix named"))
    return lines


def _heatmap() -> list[str]:
    return ["![verdicts per backend and family](heatmap.svg)", ""]


def _profile(profile: dict) -> list[str]:
    """backend rows x profile columns; italics: declared by the adapter, not measured this run. A
    deviation's behaviour is a code (kind letter and number, the same in both tables) explained
    under each table where it appears, so a cell is never cut mid-sentence."""
    lines = ["## Semantics profile (measured)", "",
             ("Each value is derived from this run's verdicts (evidence case ids in the details page); "
              "*italics*: declared capability, no case ran; codes (**D** defect, **P** precision, **T** dtype, "
              "**B** edge, with a number): a declared deviation, whose behaviour is under the table."), ""]
    codes: dict[tuple[str, str], str] = {}
    for title, keys in _profile_tables():
        used: list[tuple[str, str]] = []
        lines += [f"**{title}**", "", "| backend | " + " | ".join(dict(ROWS)[k] for k in keys) + " |",
                  "|---" * (len(keys) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(_cell_text(row[k], codes, used) for k in keys) + " |"
                  for name, row in profile.items()]
        lines += [""] + _legend(codes, used) + [""]
    return lines


def _legend(codes: dict, used: list) -> list[str]:
    """One line per deviation kind in the table: each of its codes with the whole behaviour (a
    line per code would take the findings' room on the page)."""
    by_kind = collections.defaultdict(list)
    for key in sorted(dict.fromkeys(used), key=lambda k: (len(codes[k]), codes[k])):
        by_kind[key[0]].append(f"**{codes[key]}** {key[1]}")
    order = [k for k in CATEGORIES if k in by_kind] + [k for k in by_kind if k not in CATEGORIES]
    return [f"- {kind}: " + " · ".join(by_kind[kind]) for kind in order]


def _profile_tables() -> list[tuple[str, list[str]]]:
    """The profile in two tables that fit a page: the forward facts, then gradients and replicas."""
    later = [k for k, _ in ROWS if k.endswith("_gradient") or k.startswith("replica_")]
    return [("Forward pass and running statistics", [k for k, _ in ROWS if k not in later]),
            ("Gradients and cross-replica statistics", later)]


def _cell_text(cell, codes: dict, used: list) -> str:
    """The cell's plain pieces as words, its deviation behaviours as codes (new ones numbered per
    kind letter in order of first use; ``used`` collects the table's legend)."""
    shown = []
    for kind, text in cell.pieces():
        if not kind:
            shown.append(text)
            continue
        letter = SYMBOL.get(kind, "?")
        codes.setdefault((kind, text), f"{letter}{sum(c.startswith(letter) for c in codes.values()) + 1}")
        used.append((kind, text))
        shown.append(codes[(kind, text)])
    text = "; ".join(shown).replace("|", "\\|")
    return text if cell.status == "measured" else f"*{text}*"


def _findings(document: dict, room: int) -> list[str]:
    """Unexpected cells (all of them if there is room), then findings by harm; what does not fit
    is counted and left to the details page."""
    lines = ["## Findings", "", ("Ranked by harm: defect, precision, dtype, edge. Reproduce one cell with the "
                                 "command shown; behaviour and link are the adapter's declaration, re-verified this "
                                 "run."), ""]
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
    unknown = []
    for name, meta in sorted(document["adapters"].items()):
        caps = meta.get("capabilities") or {}
        if not caps:  # an executable that could not start here declares them in its handshake only
            unknown.append(name)
            continue
        lines.append(f"| {name} | " + " | ".join(_short(caps.get(k, "?")) for k, _ in CAPABILITY_COLUMNS) + " |")
    if unknown:
        lines += ["", f"Not declared here: {', '.join(unknown)} (an executable backend declares its capabilities "
                      "when it starts, and it could not start on this machine: see \"not runnable here\")"]
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
            ("- [conformance-details.md](conformance-details.md): per backend every deviation (applies to, "
             "explanation, link), every fail, error and unsupported reason, and the profile's evidence"),
            "- [results.json](results.json): every cell, machine-readable (`bnconform report` re-renders it)",
            "- [docs/semantics.md](../docs/semantics.md): the canonical model; [README](../README.md): verdicts"]
