"""``bnconform fuzz``: differential search for cases where a backend disagrees with the oracle.

For each backend in turn, hypothesis draws examples from :func:`bnconform.interfaces.fuzz_space.draws`
(within the backend's declared capabilities), builds each into a case exactly as the shipped
specs are built, and judges it with :func:`bnconform.judging.judge.judge` under the backend's own
capabilities and declared deviations -- in the backend's host process (one per host key, as in
``bnconform run``), so a crash or a hang costs that example only (an ``error`` verdict).

A *finding* is an example judged ``fail`` or ``error`` whose signature (status and the first
output that differs, or the exception) is new in this run. Hypothesis then shrinks it to a
minimal example with the same signature, and the finding is written under ``--out``: the case
file ``<family>/<name>.json`` and ``<family>/<name>.py``, the spec code that rebuilds it byte
for byte (checked on writing), ready to be promoted into ``bnconform/specs/``. One line per
finding goes to stdout, a progress line to stderr every few seconds. The search then goes on
for other signatures until the backend's budget (``--max-examples`` drawn examples, its share
of ``--seconds``) is spent. Examples, their order and the findings depend only on ``--seed``
(and on where ``--seconds`` cuts the search off).
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .usage import positive_float, positive_int

if TYPE_CHECKING:
    from ..judging.verdict import Verdict

DEFAULT_OUT = Path("reports/partial/fuzz")


class _Disagreement(Exception):
    """Raised inside the hypothesis test so that it shrinks the example."""


class _OutOfTime(BaseException):
    """Ends a search that has no finding to shrink (not an Exception: hypothesis lets it through)."""


def signature(verdict: Verdict, dtypes: tuple = ()) -> tuple:
    """What makes two disagreements the same: the status and the first differing output (with
    whether the value received is finite, and the dtype pair), or the exception, or the
    declaration found stale. Coarse on purpose: one finding per cause, not per example."""
    if verdict.status == "error":
        return "error", verdict.detail.split(":")[0][:80]
    if verdict.detail.startswith("declared deviation not observed"):
        return "fail", "stale " + verdict.detail[len("declared deviation not observed ("):].split(":")[0]
    if not verdict.mismatches:
        return "fail", verdict.detail[:40]
    first = verdict.mismatches[0]
    finite = isinstance(first["got"], float) and isinstance(first["expected"], float)
    return "fail", str(first["output"]), "finite" if finite else "non-finite", *dtypes


class InProcess:
    """A backend judged in this process (an adapter instance: the tests' planted adapters)."""

    def __init__(self, adapter):
        self.adapter, self.name, self.capabilities = adapter, adapter.name, adapter.capabilities

    def verdict(self, case) -> Verdict:
        from ..judging.judge import judge

        return judge(self.adapter, case, "cpu")

    def close(self) -> None:
        pass


class Hosted:
    """A registered backend judged in its host process: crashes and hangs cost one example."""

    def __init__(self, name: str, hosts, workdir: Path):
        from ..execution.adapter_classes import adapter_class

        cls = adapter_class(name)
        self.name, self.capabilities = (cls.name or name), cls.capabilities
        self.target, self.hosts, self.workdir = name, hosts, workdir

    def verdict(self, case) -> Verdict:
        from ..caseformat.casefile import dumps_case
        from ..caseformat.validation import load_case
        from ..execution.plan import Cell, presettle

        path = self.workdir / case.family / f"{case.id.split('/')[1]}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dumps_case(case), encoding="utf-8")
        cell = Cell(str(path), case.id, case.family, self.target, "cpu")
        return presettle(cell, load_case(path)) or self.hosts.for_adapter(self.target).verdict(cell)

    def close(self) -> None:
        pass  # the Hosts pool is closed by run_fuzz


@dataclass
class Finding:
    """A shrunk disagreement of one backend: the example, its verdict, where it was written."""

    backend: str
    draw: object
    verdict: Verdict
    seed: int
    paths: tuple = ()

    def line(self) -> str:
        where = self.paths[0] if self.paths else self.verdict.case
        return f"{self.verdict.status} {self.backend}: {where}: {self.verdict.detail[:200]}"


@dataclass
class Progress:
    """Counts for the progress line (stderr, every ``interval`` seconds)."""

    stream: object = None  # None: sys.stderr at the time of writing
    interval: float = 5.0
    examples: int = 0
    unsupported: int = 0
    findings: int = 0
    backend: str = ""
    deadline: float = 0.0
    _next: float = field(default=0.0)

    def tick(self, verdict: Verdict | None = None, force: bool = False) -> None:
        if verdict is not None:
            self.examples += 1
            self.unsupported += verdict.status in ("unsupported", "unavailable")
        now = time.monotonic()
        if force or now >= self._next:
            self._next = now + self.interval
            print(f"fuzz {self.backend}: {self.examples} examples ({self.unsupported} not runnable), "
                  f"{self.findings} finding(s), {max(0.0, self.deadline - now):.0f} s left",
                  file=self.stream or sys.stderr, flush=True)


def _seed(seed: int, backend: str, round_: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{backend}/{round_}".encode()).digest()[:8], "little")


class _Search:
    """One hypothesis search of one backend for a disagreement not in ``known``."""

    def __init__(self, target, known: set, deadline: float, progress: Progress):
        self.target, self.known, self.deadline, self.progress = target, known, deadline, progress
        self.seen: dict[str, Verdict] = {}  # repr(draw) -> verdict: replays cost nothing
        self.wanted, self.best, self.generated = None, None, 0

    def probe(self, draw) -> None:
        from hypothesis import reject

        key = repr(draw)
        if key not in self.seen:
            if time.monotonic() > self.deadline:
                if self.wanted is None:
                    raise _OutOfTime
                return  # shrinking past the deadline: keep the smallest example found so far
            with warnings.catch_warnings():  # overflow / invalid casts are the point of many examples
                warnings.simplefilter("ignore", RuntimeWarning)
                self.seen[key] = self.target.verdict(build_case(draw, self.target.name))
            self.generated += self.wanted is None
            self.progress.tick(self.seen[key])
        verdict = self.seen[key]
        if verdict.status in ("unsupported", "unavailable"):
            reject()
        dtypes = (draw.config.input_dtype, draw.config.param_dtype)
        found = signature(verdict, dtypes) if verdict.status in ("fail", "error") else None
        if found and found not in self.known and self.wanted in (None, found):
            self.wanted, self.best = found, (draw, verdict)
            raise _Disagreement(found)

    def run(self, seed: int, examples: int):
        """The shrunk (draw, verdict) of a new disagreement, or None."""
        from hypothesis import HealthCheck, Phase, Verbosity, given
        from hypothesis import seed as seeded
        from hypothesis import settings
        from hypothesis.errors import HypothesisException

        from .fuzz_space import draws

        test = settings(max_examples=examples, database=None, deadline=None, derandomize=False,
                        suppress_health_check=list(HealthCheck), phases=(Phase.generate, Phase.shrink),
                        report_multiple_bugs=False, verbosity=Verbosity.quiet, print_blob=False)(
            seeded(seed)(given(draws(self.target.capabilities))(self.probe)))
        try:
            test()
        except (_Disagreement, HypothesisException):  # Flaky / Unsatisfiable keep the best found
            pass
        except _OutOfTime:
            return None
        return self.best


def build_case(draw, backend: str, description: str = "An example drawn by bnconform fuzz."):
    from ..specs import build

    return build(draw.spec(draw.family(), draw.name(backend), description))


def search(target, seed: int, max_examples: int, seconds: float, progress: Progress,
           max_findings: int | None = None) -> list[Finding]:
    """Every new disagreement of one backend within its budget (or the first ``max_findings``), shrunk."""
    known, findings, used, round_ = set(), [], 0, 0
    deadline = time.monotonic() + seconds
    progress.backend, progress.deadline = target.name, deadline
    while used < max_examples and time.monotonic() < deadline and len(findings) < (max_findings or max_examples):
        found = _Search(target, known, deadline, progress)
        result = found.run(_seed(seed, target.name, round_), max_examples - used)
        used, round_ = used + max(found.generated, 1), round_ + 1
        if result is None:
            break
        known.add(found.wanted)
        findings.append(Finding(target.name, result[0], result[1], seed))
        progress.findings += 1
    progress.tick(force=True)
    return findings


def write_finding(finding: Finding, out: Path) -> Finding:
    """Write the case file and the spec code that rebuilds it (checked byte for byte)."""
    from ..caseformat.casefile import dumps_case
    from ..specs import build

    draw, verdict = finding.draw, finding.verdict
    family, name = draw.family(), draw.name(finding.backend)
    description = (f"Found by bnconform fuzz (seed {finding.seed}) against {finding.backend}, shrunk: "
                   f"{verdict.status}: {verdict.detail[:300]}")
    code = _spec_file(finding, draw.spec_code(family, name, description), family)
    scope: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        text = dumps_case(build(draw.spec(family, name, description)))
        exec(compile(code, f"{name}.py", "exec"), scope)  # noqa: S102 (our own generated code)
        rebuilt = dumps_case(build(scope["SPEC"]))
    if rebuilt != text:
        raise RuntimeError(f"Expected: the spec code of {family}/{name} to rebuild its case. Received: a different case")
    target = out / family
    target.mkdir(parents=True, exist_ok=True)
    (target / f"{name}.json").write_text(text, encoding="utf-8")
    (target / f"{name}.py").write_text(code, encoding="utf-8")
    finding.paths = (target / f"{name}.json", target / f"{name}.py")
    return finding


def _spec_file(finding: Finding, spec: str, family: str) -> str:
    return (f'"""bnconform fuzz finding ({finding.verdict.status}) on {finding.backend}, seed {finding.seed}.\n\n'
            f"{finding.verdict.detail[:300]}\n\n"
            f"To promote it: copy SPEC into bnconform/specs/{family}.py (yield it from specs(), renamed for what it\n"
            "pins down), declare the backend's deviation if this is the framework's own behaviour, and run\n"
            "`bnconform generate`. `python THIS_FILE` rebuilds the case file next to it.\n"
            '"""\n\n' + finding.draw.imports() + "\n" + spec +
            '\nif __name__ == "__main__":\n    from pathlib import Path\n\n'
            "    from bnconform.caseformat.casefile import dumps_case\n    from bnconform.specs import build\n\n"
            '    Path(__file__).with_suffix(".json").write_text(dumps_case(build(SPEC)), encoding="utf-8")\n')


def fuzz(targets, seconds: float, max_examples: int, seed: int, out: Path, stream=None,
         progress: Progress | None = None, max_findings: int | None = None) -> list[Finding]:
    """Search each target in turn (an equal share of ``seconds`` each); write and print findings."""
    progress = progress or Progress()
    findings, deadline = [], time.monotonic() + seconds
    for index, target in enumerate(targets):
        share = (deadline - time.monotonic()) / (len(targets) - index)  # time one backend left unused passes on
        for finding in search(target, seed, max_examples, share, progress, max_findings):
            findings.append(write_finding(finding, out))
            print(finding.line(), file=stream or sys.stdout, flush=True)
    return findings


def run_fuzz(args) -> int:
    """The command: exit 1 when there is a finding, 0 when none, 2 for invalid input."""
    from .usage import UsageError, selected_backends

    try:
        import hypothesis  # noqa: F401
    except ImportError:
        raise UsageError("fuzz: Expected: hypothesis installed. Received: no module hypothesis; install it with: "
                         "pip install 'bnconform[test]'") from None
    from ..execution.controller import Hosts

    selected, _ = selected_backends(args)
    hosts = Hosts(args.timeout)
    with tempfile.TemporaryDirectory(prefix="bnconform-fuzz-") as work:
        targets = [Hosted(name, hosts, Path(work)) for name in selected]
        try:
            found = fuzz(targets, args.seconds, args.max_examples, args.seed, Path(args.out))
        finally:
            hosts.close()
    print(f"{len(found)} finding(s) in {len(targets)} backend(s); written under {args.out}" if found
          else f"no new disagreement in {len(targets)} backend(s)")
    return 1 if found else 0


def register(sub) -> None:
    fz = sub.add_parser("fuzz", help="search the knob space for disagreements with the oracle and write each, shrunk, "
                                     "as a case file plus its spec code")
    fz.add_argument("--backend", action="append", help="backend name, family or glob (repeatable), searched in turn")
    fz.add_argument("--adapter", action="append", default=[], help="ad hoc adapter package.module:ClassName")
    fz.add_argument("--seconds", type=positive_float, default=60.0, help="total search time, shared equally (default 60)")
    fz.add_argument("--max-examples", type=positive_int, default=200, help="examples drawn per backend at most (default 200)")
    fz.add_argument("--seed", type=int, default=0, help="the search is deterministic for a given seed (default 0)")
    fz.add_argument("--out", default=str(DEFAULT_OUT), help=f"where findings are written (default {DEFAULT_OUT})")
    fz.add_argument("--timeout", type=positive_float, default=60.0, help="seconds per example before a backend is killed")
    fz.set_defaults(func=run_fuzz, device=None)
