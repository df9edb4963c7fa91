"""``bnconform port FROM TO``: what to change, and what still differs, when a model moves APIs.

Two parts, both derived from data rather than typed per pair of frameworks:

1. **Parameter translation** (:mod:`.port_translation`), from each adapter's metadata:
   ``decay_parameter`` (how the API spells the EMA knob: ``("momentum", "new")`` weighs the new
   batch, momentum = 1 - decay; ``("momentum", "old")`` weighs the old statistic, momentum =
   decay), ``framework_defaults()`` (read from the installed framework) and the described
   ``capabilities`` (conventions such as the running-variance kind).
2. **Measured differences**: the cells of a results document where the two backends disagree
   (different status, different declared deviations, or differing failures), grouped by the pair
   of outcomes, with the verdicts' numbers. When the document lacks a backend, both are run
   (nothing is written to reports/).
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

from .port_translation import CONVENTION_WORDS, Side, ema_lines, exported_lines, translation  # noqa: F401 (port.Side, port.ema_lines)

DEFAULT_RESULTS = Path("reports/results.json")


def _deviation_names(verdict: dict) -> list[str]:
    """Observed deviation names; older documents stored one name under "deviation"."""
    return list(verdict.get("deviations") or ([verdict["deviation"]] if verdict.get("deviation") else []))


def outcome(verdict: dict) -> str:
    """The grouping label: the status, with the deviation names and kinds for a deviation."""
    if verdict["status"] != "deviation":
        return verdict["status"]
    kinds = f" [{', '.join(verdict['kinds'])}]" if verdict.get("kinds") else ""
    return f"deviation {', '.join(_deviation_names(verdict))}{kinds}"


def numbers(verdict: dict) -> str:
    """What the cell measured: worst error for a fail, the reason or exception otherwise."""
    status, detail = verdict["status"], verdict.get("detail") or ""
    if status == "fail" and verdict.get("mismatches"):
        worst = max(verdict["mismatches"], key=lambda m: _as_float(m.get("max_rel_error")))
        return (f"{worst['output']} step {worst['step']}: got {worst['got']}, expected {worst['expected']}, "
                f"max abs err {_as_float(worst['max_abs_error']):.3g}, max rel err "
                f"{_as_float(worst['max_rel_error']):.3g}" + (f" (+{len(verdict['mismatches']) - 1} outputs)"
                                                               if len(verdict["mismatches"]) > 1 else ""))
    return "" if status == "pass" else _short(detail)


def _as_float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _short(text: str, limit: int = 220) -> str:
    """At most ``limit`` characters, cut at a word boundary (never mid-word) and marked with " …"."""
    return text if len(text) <= limit else text[:limit - 1].rsplit(" ", 1)[0].rstrip(",;:") + " …"


def _key(verdict: dict) -> tuple:
    """Equal keys mean the two backends agree on the cell."""
    detail = verdict.get("detail") if verdict["status"] in ("fail", "error") else ""
    return verdict["status"], tuple(_deviation_names(verdict)), detail


def compare_cells(document: dict, a: str, b: str) -> tuple[list[tuple[dict, dict]], int, int]:
    """(disagreeing (verdict a, verdict b) pairs, cells agreeing, cells not comparable)."""
    index = {(v["case"], v["adapter"], v["device"]): v for v in document["verdicts"]}
    pairs, agree, skipped = [], 0, 0
    for (case, adapter, device), va in sorted(index.items()):
        if adapter != a:
            continue
        vb = index.get((case, b, device))
        if vb is None or "unavailable" in (va["status"], vb["status"]):
            skipped += 1
        elif _key(va) == _key(vb):
            agree += 1
        else:
            pairs.append((va, vb))
    return pairs, agree, skipped


def difference_lines(document: dict, a: str, b: str) -> list[str]:
    """The disagreeing cells grouped by (FROM outcome, TO outcome): behaviour first, then what only
    one side can express; within a group, cells with the same numbers share one line."""
    pairs, agree, skipped = compare_cells(document, a, b)
    lines = [f"{agree + len(pairs)} cells compared: {agree} agree, {len(pairs)} differ"
             + (f"; {skipped} not compared (unavailable, or a device only {a} has)" if skipped else "")]
    groups = collections.defaultdict(list)
    for va, vb in pairs:
        groups[(outcome(va), outcome(vb))].append((va, vb))
    order = sorted(groups.items(), key=lambda item: ("unsupported" in item[0], -len(item[1]), item[0]))
    for (oa, ob), cells in order:
        lines.append(f"{a}: {oa} | {b}: {ob} -- {len(cells)} cell(s)")
        lines += _same_numbers_lines(cells, a, b)
    if pairs:
        case = order[0][1][0][0]["case"]
        lines.append(f"reproduce one: bnconform check cases/{case}.json --backend {a} --backend {b}")
    return lines


def _same_numbers_lines(cells, a: str, b: str) -> list[str]:
    """One line per distinct (FROM numbers, TO numbers): the numbers, then every case id [device]."""
    by_numbers = collections.defaultdict(list)
    for va, vb in cells:
        by_numbers[(numbers(va), numbers(vb))].append(f"{va['case']} [{va['device']}]")
    lines = []
    for (na, nb), ids in by_numbers.items():
        parts = [f"{name}: {text}" for name, text in ((a, na), (b, nb)) if text]
        convention = " (a convention: see 1.)" if any(CONVENTION_WORDS in t for t in (na, nb)) else ""
        lines.append(f"  {' | '.join(parts) or 'no detail'}{convention}")
        lines.append(f"    {len(ids)} case(s): {', '.join(ids)}")
    return lines


def _profile(document: dict):
    """(ROWS, {backend: {row key: ProfileCell}}) from bnconform.reporting.profile, None if it does not exist,
    or the one line saying why it failed (a broken profile must not hide the rest of the report)."""
    try:
        from ..reporting.profile import ROWS, build_profile

        return ROWS, build_profile(document)
    except ModuleNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - another module's bug: say why, keep the report
        return f"semantics profile unavailable: {type(exc).__name__}: {exc}"


def profile_lines(document: dict, a: str, b: str) -> list[str]:
    """Semantics-profile rows (key, label) whose values differ between the two, side by side."""
    found = _profile(document)
    if not isinstance(found, tuple):
        return [found] if found else []
    rows, profile = found
    lines = []
    for row in rows:
        key, label = (row, row) if isinstance(row, str) else (row[0], row[-1])
        value_a, value_b = (getattr(profile.get(n, {}).get(key), "value", None) for n in (a, b))
        if value_a != value_b:
            lines.append(f"{label}: {a}: {value_a} | {b}: {value_b}")
    return lines


# --- Where the document and the metadata come from ---------------------------------------------

def side_of(document: dict, name: str) -> Side:
    """A backend's metadata as the document stores it (absent keys: not declared), with the cells
    that measured its running-variance kind (reporting.pages.translation, shared with the page)."""
    from ..reporting.pages.translation import side_of as read_side

    return read_side(document, name)


def has_backend(document: dict | None, name: str) -> bool:
    return bool(document) and any(v["adapter"] == name and v["status"] != "unavailable" for v in document["verdicts"])


def run_document(names: list[str], case_root: Path, cases: list, devices) -> dict:
    """Run the backends over ``cases`` (read from ``case_root``) in host processes; returns the
    document, writes nothing."""
    from ..execution.plan import plan
    from ..execution.scheduler import run_cells
    from ..reporting import results

    cells = plan(cases, names, devices)
    print(f"running {len(cells)} cells of {', '.join(names)} (nothing is written to reports/)", file=sys.stderr)
    verdicts, infos = run_cells(cells, jobs=min(2, len(names)))
    return results.build(verdicts, infos, {"backend": names}, case_root)


def check_names(names: list[str], document: dict | None) -> None:
    """Raise UsageError (one line, with did-you-mean from bnconform.execution.selection) unless each name is
    exactly one backend: registered, in the document, or an ad hoc module:Class."""
    from ..adapters.registry import RegistryError, known
    from ..execution.selection import select_backends
    from .usage import UsageError

    for name in names:
        if name in known() or name in (document or {}).get("adapters", {}) or ":" in name:
            continue
        try:
            members = select_backends([name], [])
        except RegistryError as exc:
            raise UsageError(f"port: {exc}") from None
        raise UsageError(f"port: {name!r} names {len(members)} backends ({', '.join(members)}); Expected: one of them")


def load_document(path: Path) -> tuple[dict | None, str]:
    """(the results document, "") or (None, why there is none: the file does not exist, and the two
    backends are run instead); a file that exists but is no results document (truncated, another
    format, malformed) is the user's one-line error."""
    from ..reporting import results
    from .usage import UsageError

    if not path.exists():
        return None, f"{path}: no such file"
    try:
        return results.read(path), ""
    except results.ResultsError as exc:
        raise UsageError(f"port: --results {exc}") from None


def report(document: dict, a: str, b: str, source: str) -> list[str]:
    """The whole port report as lines."""
    sa, sb = side_of(document, a), side_of(document, b)
    lines = [f"Porting a model from {a} to {b}", "", "1. Parameter translation (from the adapters' metadata)"]
    lines += [f"  {line}" for line in translation(sa, sb)]
    exported = exported_lines(sa, sb)
    if exported:
        lines += ["", "1b. Parameters as written into the exported graph (the adapters' exported_parameters)"]
        lines += [f"  {line}" for line in exported]
    lines += ["", f"2. Measured differences ({source})"] + [f"  {line}" for line in difference_lines(document, a, b)]
    profile = profile_lines(document, a, b)
    if profile:
        lines += ["", "3. Semantics profile rows that differ (bnconform.reporting.profile)"] + [f"  {line}" for line in profile]
    return lines


def _devices(asked, names) -> list[str]:
    """The --device kinds of a fresh run (default cpu), each declared by one of the two backends."""
    from ..adapters.registry import RegistryError
    from ..execution.selection import select_devices
    from .usage import UsageError

    try:
        return select_devices(asked or ["cpu"], names)
    except RegistryError as exc:
        raise UsageError(f"port: {exc}") from None


def cmd_port(args) -> int:
    path = Path(args.results or DEFAULT_RESULTS)
    document, problem = load_document(path)
    check_names([args.source, args.target], document)
    source = str(path)
    if not (has_backend(document, args.source) and has_backend(document, args.target)):
        from .usage import case_root, matrix_cases

        names, args.cases = [args.source, args.target], case_root(args.cases)
        cases, devices = matrix_cases(args.cases, args.family)[0], _devices(args.device, names)  # checked first
        reason = problem or f"{path} has no results for both {args.source} and {args.target}"
        print(f"{reason}; running them now", file=sys.stderr)
        document = run_document(names, Path(args.cases), cases, devices)
        source = "measured now"
    from .subcommands import DOCUMENT_FAULTS, bad_results_line
    from .usage import UsageError

    try:
        lines = report(document, args.source, args.target, source)
    except DOCUMENT_FAULTS as exc:
        raise UsageError(f"port: {bad_results_line([path], exc)}") from None
    print("\n".join(lines))
    return 0


def register_port(sub) -> None:
    port = sub.add_parser("port", help="what to change, and what still differs, moving a model between two backends")
    port.add_argument("source", metavar="FROM", help="backend the model comes from, e.g. torch.nn")
    port.add_argument("target", metavar="TO", help="backend it moves to, e.g. keras3.tensorflow")
    port.add_argument("--results", help=f"results document (default: {DEFAULT_RESULTS}); when it does not exist, "
                                        "the two backends are run now")
    port.add_argument("--cases", help="case directory for a fresh run (default: ./cases, else the shipped vectors)")
    port.add_argument("--family", action="append", help="case family for a fresh run (repeatable; default: all)")
    port.add_argument("--device", action="append", help="device for a fresh run (repeatable; default: cpu)")
    port.set_defaults(func=cmd_port)
