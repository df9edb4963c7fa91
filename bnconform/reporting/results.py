"""reports/results.json: building, reading, merging and diffing machine-readable results.

The document holds the environment (platform, Python, framework versions, devices), the
adapters' capabilities and declared deviations (each with its kind and effect), per case its
description and ``case_meta`` (the properties the semantics profile selects evidence by, so
``bnconform report`` re-renders from the document alone), and one verdict per cell. Merging documents from several
machines (a CPU CI run and a GPU run) keeps every cell; for a cell present in both, the later
document wins.
"""

from __future__ import annotations

import collections
import datetime
import json
import platform
import sys
import threading
from pathlib import Path

from .. import __version__
from ..caseformat.bounded_input import size_problem
from ..execution.plan import adapter_metadata
from ..judging.verdict import Verdict
from .coverage import coverage
from .document_check import MAX_RESULTS_BYTES, check_document

RESULTS_FORMAT = 2  # 2: verdicts carry deviations/kinds; adapters carry capabilities, defaults; case_meta


def environment() -> dict:
    """Where this run happened (for the report header)."""
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "platform": platform.platform(), "machine": platform.machine(),
            "python": sys.version.split()[0], "bnconform": __version__}


def describe_cases(verdicts, case_root: Path) -> dict[str, str]:
    """case id -> its one-line description (a case id is its path under the case root)."""
    descriptions = {}
    for case_id in sorted({v.case for v in verdicts}):
        try:
            descriptions[case_id] = json.loads((case_root / f"{case_id}.json").read_text(encoding="utf-8"))["description"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a custom case outside the root: the report shows its id only
    return descriptions


def case_metadata(case) -> dict:
    """What the profile needs to know about one case, read from the case itself (never its name).

    ``training_n`` / ``update_n``: N per channel of the training / updating steps;
    ``depends_on``: the convention knobs whose value changes the case's expected results (the
    oracle rerun with another value misses the tolerances); ``mean_to_spread``: the largest
    |mean| / std of a channel in a training batch with N >= 2 (cancellation when >= 1e3);
    ``gradients``: the normalize_with values of the steps that carry an upstream dy;
    ``replica_splits``: how replicated steps split the batch (bnconform.judging.capabilities.replica_split).
    """
    cfg, rs = case.config, case.config.running_stats
    counts = case.reduce_counts()
    return {"input_dtype": cfg.input_dtype, "param_dtype": cfg.param_dtype, "rank": case.rank,
            "epsilon": cfg.effective_epsilon, "epsilon_mode": cfg.epsilon_mode, "rule": rs.rule, "decay": rs.decay,
            "variance": rs.variance, "zero_debias": rs.zero_debias, "schedule": rs.num_updates_schedule,
            "extensions": list(case.extensions),
            "training_n": sorted({n for s, n in zip(case.steps, counts) if s.is_training}),
            "update_n": sorted({n for s, n in zip(case.steps, counts) if s.update_running_stats}),
            "step_kinds": sorted({f"{s.normalize_with}+{'update' if s.update_running_stats else 'no-update'}"
                                  for s in case.steps}),
            "depends_on": _depends_on(case), "mean_to_spread": _mean_to_spread(case),
            "gradients": sorted(case.gradient_modes), "replica_splits": _replica_splits(case)}


def _replica_splits(case) -> list[str]:
    """How the replicated steps split the batch: "equal", "unequal", "empty" (none: not replicated)."""
    from ..judging.capabilities import replica_split

    return sorted({replica_split(s.replica_sizes) for s in case.steps if s.replica_sizes is not None})


def _depends_on(case) -> list[str]:
    """Convention knobs for which some other value fails to reproduce the case's expectations."""
    from ..caseformat.model import EPSILON_MODES, VARIANCE_KINDS
    from ..judging.capabilities import reproduces

    cfg, rs = case.config, case.config.running_stats
    others = {"epsilon_modes": [m for m in EPSILON_MODES if m != cfg.epsilon_mode],
              "running_variance": [k for k in VARIANCE_KINDS if k != rs.variance],
              "zero_debias": [not rs.zero_debias] if rs.rule == "ema" and not case.extensions else []}
    return [knob for knob, values in others.items() if any(not reproduces(case, knob, v) for v in values)]


def _mean_to_spread(case) -> float:
    """The largest |mean| / spread over the non-constant channels of the training batches."""
    import numpy as np

    from ..judging.selectors import training_channel_moments

    worst = 0.0
    for mean, std in training_channel_moments(case):
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = mean / std
        finite = ratio[np.isfinite(ratio)]
        worst = max(worst, float(finite.max()) if finite.size else 0.0)
    return worst


def describe_case_meta(verdicts, case_root: Path) -> dict[str, dict]:
    """case id -> :func:`case_metadata` for every case under the root (custom cases: none)."""
    found = {case_id: _read_metadata(Path(case_root) / f"{case_id}.json")
             for case_id in sorted({v.case for v in verdicts})}
    return {case_id: read[1] for case_id, read in found.items() if read is not None}


def _read_metadata(path) -> tuple[str, dict] | None:
    """(the case's id, its :func:`case_metadata`), or None for a file that is not a valid case."""
    from ..caseformat.validation import CaseError
    from ..execution.case_cache import load_case

    try:
        case = load_case(path)
        return case.id, case_metadata(case)
    except (CaseError, OSError, ValueError):
        return None


class CaseMetaInAdvance:
    """:func:`describe_case_meta` of the case files under a root, computed on a background thread
    while a matrix runs (its controller mostly waits for host processes), so that writing the
    reports does not add ~2 s of oracle re-runs to the end of the run. Calling it with the
    verdicts returns their cases' metadata, computing any case it did not prefetch."""

    def __init__(self, case_root: Path, paths):
        self.case_root, self._meta = Path(case_root), {}
        self._thread = threading.Thread(target=self._fill, args=(list(paths),), daemon=True)
        self._thread.start()

    def _fill(self, paths) -> None:
        self._meta.update(read for read in map(_read_metadata, paths) if read is not None)

    def __call__(self, verdicts) -> dict[str, dict]:
        self._thread.join()
        missing = [v for v in verdicts if v.case not in self._meta]
        meta = {v.case: self._meta[v.case] for v in verdicts if v.case in self._meta}
        return dict(sorted({**meta, **describe_case_meta(missing, self.case_root)}.items()))


def _effects(name: str) -> dict[str, dict]:
    """deviation name -> what it declares: {"raises": class} or {"outputs": [...]} or {"variant": text}."""
    from ..adapters.registry import resolve
    from ..judging.declarations import Mismatches, Raises

    effects = {}
    for d in resolve(name).deviations:
        b = d.behaviour
        effects[d.name] = ({"raises": b.exception} if isinstance(b, Raises) else
                           {"outputs": list(b.outputs)} if isinstance(b, Mismatches) else {"variant": b.describe()})
    return effects


def build(verdicts: list[Verdict], infos: dict[str, dict], selection: dict, case_root: Path = Path("cases"),
          case_meta: CaseMetaInAdvance | None = None) -> dict:
    """The results document; ``infos`` maps adapter name -> worker info (version, devices);
    ``case_meta`` is the prefetch started when the run began (None: computed here). Verdicts are
    stored sorted by (adapter, device, case)."""
    adapters, per_adapter = {}, collections.defaultdict(list)
    for v in verdicts:
        per_adapter[v.adapter].append(v)
    for name in sorted(set(per_adapter) | set(infos)):
        meta = adapter_metadata(name) if _resolvable(name) else {}
        effects = _effects(name) if meta else {}
        for deviation in meta.get("deviations", []):
            deviation["effect"] = effects.get(deviation["name"], {})
        info, own = infos.get(name, {}), per_adapter[name]
        version = info.get("version") or next((v.version for v in own if v.version), "?")
        ran_on = sorted({v.device for v in own if v.status != "unavailable"})
        adapters[name] = {**meta, "version": version, "devices": info.get("devices", ran_on),
                          "defaults": info.get("defaults", {}),
                          "unavailable": info.get("unavailable") or _unavailable(own, name, ran_on)}
    ordered = [v.to_json() for v in sorted(verdicts, key=lambda v: (v.adapter, v.device, v.case))]
    for name, figures in coverage({"verdicts": ordered}).items():
        adapters.setdefault(name, {})["coverage"] = figures
    return {"format": RESULTS_FORMAT, "runs": [{**environment(), "selection": selection}],
            "adapters": adapters, "cases": describe_cases(verdicts, Path(case_root)),
            "case_meta": case_meta(verdicts) if case_meta else describe_case_meta(verdicts, Path(case_root)),
            # one order however the cells were run (pytest reports them as they finish), so the
            # document, and every page's choice among equals, is the same whichever way it was run
            "verdicts": ordered}


def _unavailable(verdicts, name: str, ran_on) -> str | None:
    """The framework-level reason, when no cell of the adapter could run at all."""
    if ran_on:
        return None
    return next((v.detail for v in verdicts if v.adapter == name and v.status == "unavailable"), None)


def _resolvable(name: str) -> bool:
    from ..adapters.registry import RegistryError, resolve

    try:
        resolve(name)
        return True
    except RegistryError:
        return False


def write(document: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(document), encoding="utf-8")


def dumps(document: dict) -> str:
    """The document as JSON text: indented, except that each verdict is one line of its own.

    A line per cell makes a diff of two runs one line per changed cell (an indented verdict spans
    ~20 lines) and the whole matrix's file ~11 % smaller; the value is the same JSON."""
    verdicts = document.get("verdicts")
    if not isinstance(verdicts, list):
        return json.dumps(document, indent=1, allow_nan=False) + "\n"
    placeholder = "\0verdicts\0"
    text = json.dumps({**document, "verdicts": placeholder}, indent=1, allow_nan=False)
    lines = ",\n".join("  " + json.dumps(verdict, allow_nan=False) for verdict in verdicts)
    return text.replace(json.dumps(placeholder), f"[\n{lines}\n ]" if verdicts else "[]") + "\n"


class ResultsError(ValueError):
    """A results file that cannot be read; str() is the one line to show."""


def read(path: Path) -> dict:
    """The results document in ``path``, checked (:mod:`.document_check`); ResultsError (one line
    naming the file and field) for a file too large, not JSON, of another format or malformed."""
    path = Path(path)
    try:
        too_large = size_problem(path.stat().st_size, MAX_RESULTS_BYTES, "a results document")
        if too_large:
            raise ResultsError(f"{path}: {too_large}")
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ResultsError(f"{path}: Expected: a bnconform results.json. Received: {exc}") from None
    if isinstance(document, dict) and document.get("format") != RESULTS_FORMAT:
        raise ResultsError(f"{path}: Expected: format {RESULTS_FORMAT} (a bnconform results document). Received: "
                           f"format {document.get('format')!r}; re-run `bnconform run` to regenerate it")
    problem = check_document(document)
    if problem:
        raise ResultsError(f"{path}: {problem}")
    return document


def merge(documents: list[dict]) -> dict:
    """One matrix from several runs; per cell, the later document wins."""
    cells, adapters, runs, cases, case_meta = {}, {}, [], {}, {}
    for document in documents:
        runs += document["runs"]
        cases.update(document.get("cases", {}))
        case_meta.update(document.get("case_meta", {}))
        for name, meta in document["adapters"].items():
            merged = adapters.setdefault(name, dict(meta))
            merged["devices"] = sorted(set(merged.get("devices") or []) | set(meta.get("devices") or []))
        for verdict in document["verdicts"]:
            key = (verdict["case"], verdict["adapter"], verdict["device"])
            if key not in cells or verdict["status"] != "unavailable":
                cells[key] = verdict
    merged = {"format": RESULTS_FORMAT, "runs": runs, "adapters": adapters, "cases": cases,
              "case_meta": case_meta, "verdicts": list(cells.values())}
    for name, figures in coverage(merged).items():  # over the merged cells, not either run's
        adapters.setdefault(name, {})["coverage"] = figures
    return merged


def verdicts_of(document: dict) -> list[Verdict]:
    return [Verdict.from_json(v) for v in document["verdicts"]]


def diff(old: dict, new: dict) -> list[str]:
    """One line per cell whose status or detail changed between two result documents (a cell
    present in one document only is added or removed), in cell order."""
    return [line for _, line in _changes(old, new)]


def diff_summary(old: dict, new: dict) -> str:
    """One line counting the cells :func:`diff` lists (so the count equals its number of lines),
    by transition, most common first (ties by name), then the added and removed cells, e.g.
    ``"1,473 cells changed: 1,200 pass -> fail, 253 fail -> pass; 17 added, 3 removed"``."""
    counts = collections.Counter(kind for kind, _ in _changes(old, new))
    total = sum(counts.values())
    ends = [f"{counts.pop(k):,} {k}" for k in ("added", "removed") if k in counts]
    moves = [f"{n:,} {kind}" for kind, n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]
    parts = "; ".join(p for p in (", ".join(moves), ", ".join(ends)) if p)
    return f"{total:,} cell{'s' if total != 1 else ''} changed: {parts}"


def _changes(old: dict, new: dict):
    """(transition, line) for each changed cell in cell order; transition is "added", "removed",
    "OLD -> NEW" (status changed) or "STATUS detail changed" (a fail or error with a new detail)."""
    def index(document):
        return {(v["case"], v["adapter"], v["device"]): v for v in document["verdicts"]}

    before, after = index(old), index(new)
    for key in sorted(before.keys() | after.keys()):
        a, b = before.get(key), after.get(key)
        cell = f"{key[0]}[{key[1]}-{key[2]}]"
        if a is None or b is None:
            kind = "added" if a is None else "removed"
            yield kind, f"{cell}: {kind} ({(b or a)['status']})"
        elif a["status"] != b["status"]:
            move = f"{a['status']} -> {b['status']}"
            yield move, f"{cell}: {move}: {b['detail'] or a['detail']}"
        elif a["detail"] != b["detail"] and a["status"] in ("fail", "error"):
            yield f"{a['status']} detail changed", f"{cell}: {a['status']} changed: {a['detail']} -> {b['detail']}"
