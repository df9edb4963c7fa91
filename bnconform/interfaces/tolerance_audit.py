"""``bnconform validate --tolerances``: an audit of the per-element error bounds, showing their teeth.

For each case, step and compared output (bnconform.reference.bounds.DERIVED_KEYS that the step
expects) one line: the largest per-element bound the judge applies, the output's scale (largest
finite |expected|), their ratio and, when a catalogue of wrong implementations (mutants) is
loaded, the nearest mutant: among those whose result for the output differs from expected at all
(beyond ``DIFFERS`` of the scale), the one with the smallest ``max_i |got_i - e_i| / bound_i``
("distance in bounds": up to 1 the bound admits it on this output).

An output is flagged (exit 1) when

* its largest bound exceeds its scale -- unless the output is *zero by construction*, which is
  named instead and not flagged: every finite expected value is below ``TINY`` (an empty batch),
  or the largest is float64 rounding noise of the terms that cancel in it (below ``NOISE``
  float64 epsilons of them, the terms being the largest bound over the output's rtol: dx when dy
  is constant per channel comes out of the oracle as 1e-17, not 0), or it is dx of a batch step
  whose every group holds N <= 2 values (xhat = +-1 up to eps: dx is eps-driven, docs/case-format.md);
* or it admits a mutant: one the judge passes on this output although on some element it differs
  by more than that element's rounding room (bnconform.reference.bounds.rounding_room: K
  roundings of the element's own terms in the returned dtype; a smaller defect is one a right
  implementation's rounding could also produce) plus ``ADMITS`` of the scale (for an output zero
  by construction, of the terms that cancel in it instead). Such a mutant got in through what
  ill conditioning adds to the bound (a rounded mean amplified by |mu| / sigma, a replica
  combination): that is what the audit is for.
  The line says whether the case still catches that mutant through another output (compare_case
  on the whole case).

Mutants come from a Python file holding ``CATALOGUE`` (a list of Adapter classes, as
tests/mutants.py); they run in-process on device "cpu", once per case. One that cannot express a
case or raises on it is skipped for that case.
"""

from __future__ import annotations

import importlib.util
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DIFFERS = 1e-12  # a mutant's result differs from expected (relative to the output's scale)
ADMITS = 1e-6  # a difference this large (relative to the scale) that passes is an admitted mutant
TINY = 1e-300  # |expected| below this counts as zero
NOISE = 64  # float64 epsilons of the cancelling terms below which an output is rounding noise
DEFAULT_MUTANTS = Path("tests") / "mutants.py"
_INPUT_DTYPE_KEYS = ("y", "batch_mean", "batch_var", "dx")  # returned in the input dtype; the rest in the parameter dtype
_PROGRESS_AFTER = 3.0  # seconds before progress lines start on stderr
_PROGRESS_EVERY = 5.0


@dataclass
class Admission:
    """A mutant the bound of one output admits, and how the whole case fares against it."""

    mutant: str
    caught_by: list[str]  # "step S output" the case catches it through (empty: not caught)


@dataclass
class OutputAudit:
    """The audit of one output of one step of one case."""

    case: str
    step: int
    output: str
    bound: float  # largest per-element bound over finite expected elements (0 if none)
    scale: float  # largest finite |expected| (0 if none)
    zero: bool = False  # zero by construction (see the module docstring)
    nearest: tuple[str, float] | None = None  # (mutant, distance in bounds) among those that differ
    admitted: list[Admission] = field(default_factory=list)

    @property
    def too_wide(self) -> bool:
        return self.bound > self.scale and not self.zero

    @property
    def flagged(self) -> bool:
        return self.too_wide or bool(self.admitted)

    @property
    def ratio(self) -> float:
        return self.bound / self.scale if self.scale > 0 else float("inf") if self.bound > 0 else float("nan")


# -- mutants -----------------------------------------------------------------------------------
def load_mutants(path) -> list:
    """One instance of each class in the ``CATALOGUE`` of the Python file ``path`` (its folder goes
    on sys.path so that it may import its siblings), or a UsageError naming what is wrong."""
    from .usage import UsageError

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--mutants: Expected: a Python file holding CATALOGUE. Received: {path} (no such file)")
    try:
        module = _import_file(path)
        catalogue = list(module.CATALOGUE)
        return [cls() for cls in catalogue]
    except Exception as exc:  # noqa: BLE001 (the file is the user's: any failure is bad input)
        first = (str(exc).strip().splitlines() or [""])[0]
        raise UsageError(f"--mutants: Expected: a Python file whose CATALOGUE lists adapter classes. "
                         f"Received: {path} ({type(exc).__name__}: {first})") from None


def _import_file(path: Path):
    """The module of ``path``, imported under its own name so that siblings importing it by that
    name share it (tests/mutants_extensions.py registers into tests/mutants.py's CATALOGUE); the
    module already imported from the same file is reused, and one of that name from another file
    is back in sys.modules afterwards."""
    name, folder = path.stem, str(path.resolve().parent)
    previous = sys.modules.get(name)
    if previous is not None and Path(getattr(previous, "__file__", None) or "").resolve() == path.resolve():
        return previous
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        if previous is not None:
            sys.modules[name] = previous
    return module


def mutant_runs(case, mutants) -> dict:
    """{mutant name: its per-step results on ``case``}, leaving out mutants that cannot express the
    case, raise on it or return a list of another length."""
    from ..judging.judge import cannot_express

    runs = {}
    for mutant in mutants:
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                if cannot_express(mutant, case, "cpu"):
                    continue
                results = mutant.run(case, "cpu")
        except Exception:  # noqa: BLE001, S112 (a mutant that raises on a case is skipped for it)
            continue
        if isinstance(results, (list, tuple)) and len(results) == len(case.steps):
            runs[mutant.name or type(mutant).__name__] = results
    return runs


# -- one output --------------------------------------------------------------------------------
def _figures(expected: np.ndarray, bound: np.ndarray) -> tuple[float, float]:
    """(largest bound, scale) over the finite expected elements; (0, 0) when there is none."""
    finite = np.isfinite(expected)
    if not finite.any():
        return 0.0, 0.0
    return float(np.max(bound[finite])), float(np.max(np.abs(expected[finite])))


def distance(expected: np.ndarray, got, bound: np.ndarray, dtype: str) -> tuple[float, float]:
    """(largest |got - e|, largest |got - e| / bound) over the elements, both infinite where a NaN,
    an infinity or the shape differs; an element equal to expected (or to the infinity an
    out-of-range expected value rounds to in ``dtype``) counts 0."""
    from ..judging.compare import overflow_infinity

    got = np.asarray(got, np.float64) if got is not None else None
    if got is None or got.shape != expected.shape:
        return float("inf"), float("inf")
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        same = (got == expected) | (np.isnan(got) & np.isnan(expected)) | (got == overflow_infinity(expected, dtype))
        finite = np.isfinite(got) & np.isfinite(expected)
        diff = np.where(same, 0.0, np.where(finite, np.abs(got - expected), np.inf))
        ratio = np.where(diff == 0, 0.0, diff / bound)
    return (float(diff.max()), float(np.nan_to_num(ratio, nan=np.inf).max())) if diff.size else (0.0, 0.0)


def audit_output(case, index: int, key: str, runs: dict) -> OutputAudit:
    """The audit of output ``key`` of step ``index`` against the mutants' ``runs``; an admitted
    mutant's whole-case fate is filled in by :func:`audit_case`."""
    from ..reference.bounds import element_bound, rounding_room

    step = case.steps[index]
    expected = np.asarray(step.expected[key], np.float64)
    bound = np.broadcast_to(element_bound(case, index, key, expected, step.tolerance.get(key)), expected.shape)
    audit = OutputAudit(case.id, index, key, *_figures(expected, bound))
    audit.zero, reference = _zero_and_reference(case, index, key, audit.bound, audit.scale)
    dtype = case.config.input_dtype if key in _INPUT_DTYPE_KEYS else case.config.param_dtype
    room = rounding_room(case, index, key, expected)
    if room is None:  # nothing derived (an empty batch): the stored rtol's share of the element
        room = step.tolerance[key]["rtol"] * np.abs(np.where(np.isfinite(expected), expected, 0.0))
    for name, results in runs.items():
        gap, reach = distance(expected, results[index].get(key), bound, dtype)
        if not gap > DIFFERS * reference:
            continue
        if audit.nearest is None or reach < audit.nearest[1]:
            audit.nearest = (name, reach)
        beyond_rounding = _beyond(expected, results[index][key], room + ADMITS * reference)
        if beyond_rounding and reach <= 1 and _passes(case, index, key, results[index][key]):
            audit.admitted.append(Admission(name, []))
    return audit


def _beyond(expected: np.ndarray, got, room: np.ndarray) -> bool:
    """Whether ``got`` differs from ``expected`` by more than ``room`` on some finite element."""
    got = np.asarray(got, np.float64)
    if got.shape != expected.shape:
        return True
    with np.errstate(invalid="ignore", over="ignore"):
        finite = np.isfinite(got) & np.isfinite(expected)
        return bool(np.any(np.abs(got - expected)[finite] > np.broadcast_to(room, expected.shape)[finite]))


def _zero_and_reference(case, index: int, key: str, bound: float, scale: float) -> tuple[bool, float]:
    """(whether the output is zero by construction, what its differences are measured against:
    its scale, or for an output zero by construction the terms that cancel in it, taken as its
    largest bound over its rtol)."""
    from ..reference.bounds import case_bounds

    step_bounds = case_bounds(case)[index]
    terms = bound / step_bounds.rtol(key)
    zero = scale < TINY or scale <= NOISE * np.finfo(np.float64).eps * terms or _two_per_group(step_bounds, key)
    return zero, terms if zero else scale


def _two_per_group(step_bounds, key: str) -> bool:
    """dx of a batch step whose every group holds at most 2 values per channel."""
    groups = step_bounds.groups
    return (key == "dx" and groups is not None and step_bounds.step.normalize_with == "batch"
            and int(np.max(groups.counts)) <= 2)


def _passes(case, index: int, key: str, got) -> bool:
    """Whether the judge passes ``got`` on this one output (every element and, for a reduction,
    the bias check)."""
    from ..judging.compare import output_mismatch

    return output_mismatch(case, index, key, got) is None


def caught_by(case, results) -> list[str]:
    """Where the whole case catches ``results``: "step S output" per failing output (the error
    itself when the results are malformed); empty when the case passes them."""
    from ..judging.compare import compare_case

    try:
        mismatches, _ = compare_case(case, results)
    except ValueError as exc:
        return [f"its bad results ({exc})"]
    return list(dict.fromkeys(f"step {m.step} {m.output}" for m in mismatches))


# -- one case, all cases ---------------------------------------------------------------------
def audit_case(case, mutants) -> tuple[list[OutputAudit], int]:
    """(every compared output of every step of ``case``, how many mutants were skipped on it); each
    mutant runs once for the whole case."""
    from ..reference.bounds import DERIVED_KEYS

    runs = mutant_runs(case, mutants)
    audits = [audit_output(case, i, key, runs) for i, step in enumerate(case.steps) for key in DERIVED_KEYS
              if step.expected.get(key) is not None and step.tolerance.get(key) is not None]
    fates: dict[str, list[str]] = {}
    for admission in (a for audit in audits for a in audit.admitted):
        if admission.mutant not in fates:
            fates[admission.mutant] = caught_by(case, runs[admission.mutant])
        admission.caught_by = fates[admission.mutant]
    return audits, len(mutants) - len(runs)


def audit_cases(cases, mutants, progress=sys.stderr):
    """Yield :func:`audit_case` of each case in order; progress lines on ``progress`` once it takes
    a while."""
    start, shown = time.perf_counter(), None
    for number, case in enumerate(cases, 1):
        yield audit_case(case, mutants)
        elapsed = time.perf_counter() - start
        if elapsed > _PROGRESS_AFTER and (shown is None or elapsed - shown >= _PROGRESS_EVERY):
            shown = elapsed
            print(f"tolerance audit: {number}/{len(cases)} cases ({elapsed:.0f} s)", file=progress, flush=True)


# -- text ----------------------------------------------------------------------------------------
def _caught_text(admission: Admission) -> str:
    where = admission.caught_by
    if not where:
        return "not caught by this case"
    return "caught by " + ", ".join(where[:3]) + (f" (+{len(where) - 3} more)" if len(where) > 3 else "")


def reasons(audit: OutputAudit) -> list[str]:
    """The flags of one output ("FLAG ..."), or the zero-by-construction note."""
    found = [f"FLAG bound exceeds scale ({audit.ratio:.3g}x)"] if audit.too_wide else []
    found += [f"FLAG admits {a.mutant} here ({_caught_text(a)})" for a in audit.admitted]
    return found + (["zero by construction"] if audit.zero else [])


def line(audit: OutputAudit, with_mutants: bool) -> str:
    """One line: case, step, output, largest bound, scale, ratio, nearest mutant, then reasons."""
    text = (f"{audit.case} step {audit.step} {audit.output}: bound {audit.bound:.3g}, scale {audit.scale:.3g}, "
            f"ratio {audit.ratio:.3g}")
    if with_mutants:
        nearest = audit.nearest
        text += (f"; nearest {nearest[0]} at {nearest[1]:.3g} bounds" if nearest else "; no mutant differs")
    return "; ".join([text, *reasons(audit)])


def summary(audits: list[OutputAudit], cases: int, mutants: int | None, skipped: int, seconds: float) -> str:
    """The closing line: outputs audited, flagged for scale, admitted mutants (and mutant runs
    skipped: raised, or could not express the case)."""
    wide = sum(a.too_wide for a in audits)
    zero = sum(a.zero for a in audits)
    pairs = [x for a in audits for x in a.admitted]
    text = (f"{len(audits)} outputs of {cases} cases audited in {seconds:.1f} s: {wide} flagged for scale "
            f"({zero} zero by construction, not flagged)")
    if mutants is None:
        return text + "; no mutants"
    admitting = sum(bool(a.admitted) for a in audits)
    uncaught = sum(not x.caught_by for x in pairs)
    return (text + f"; {len(pairs)} admitted mutants ({admitting} outputs, {mutants} mutants; "
            f"{uncaught} not caught by their case; {skipped} mutant runs skipped)")


# -- the command ---------------------------------------------------------------------------------
def _mutants_for(option) -> tuple[list | None, str | None]:
    """(the mutants, or None; the note saying why there are none) for --mutants ``option``."""
    if option:
        return load_mutants(option), None
    if DEFAULT_MUTANTS.is_file():
        return load_mutants(DEFAULT_MUTANTS), None
    return None, f"no mutant columns: no {DEFAULT_MUTANTS} here (name a catalogue with --mutants FILE)"


def _load_cases(paths) -> list:
    """The cases of ``paths`` (default: the case root), or a UsageError for a bad file."""
    from ..caseformat.validation import CaseError, load_case
    from .usage import UsageError, case_paths, case_root

    try:
        return [load_case(p) for p in case_paths(paths or [case_root(None)])]
    except CaseError as exc:
        raise UsageError(str(exc)) from None


def run_audit(args) -> int:
    """``validate --tolerances``: 1 when any output is flagged, 0 when none, 2 for bad input."""
    from .usage import UsageError

    if not args.tolerances:
        raise UsageError("--mutants/--flagged-only: Expected: with --tolerances. Received: without it")
    if args.oracle:
        raise UsageError("validate: Expected: --tolerances or --oracle. Received: both")
    cases = _load_cases(args.paths)
    mutants, note = _mutants_for(args.mutants)
    if note:
        print(note)
    start, audits, skipped = time.perf_counter(), [], 0
    for found, left_out in audit_cases(cases, mutants or []):
        audits, skipped = audits + found, skipped + left_out
        for audit in found:
            if audit.flagged or not args.flagged_only:
                print(line(audit, mutants is not None), flush=True)
    count = None if mutants is None else len(mutants)
    print(summary(audits, len(cases), count, skipped, time.perf_counter() - start))
    return 1 if any(a.flagged for a in audits) else 0
