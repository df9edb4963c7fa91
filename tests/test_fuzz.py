"""``bnconform fuzz`` finds planted defects the shipped cases miss, and writes each as a case.

The planted adapters are the oracle with one defect that shows only in a corner of the space: a
batch mean between 100 and 1000 in magnitude, bfloat16 inputs of rank 5, exactly N = 3 values per
channel, a NaN in the batch's last sample. Each is caught by fewer than MARGIN shipped cases (the
premise), and fuzz (in-process judge, fixed seed, a few hundred examples at most) must find it,
shrink it, and write a case file that the planted adapter fails and the oracle passes, with spec
code that rebuilds the case byte for byte.
"""

from __future__ import annotations

import io
import os
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

import mutants
from bnconform.reference import oracle
from bnconform.adapters.base import Adapter
from bnconform.adapters.numpy_oracle import OracleAdapter
from bnconform.caseformat.casefile import dumps_case
from bnconform.interfaces.fuzz import InProcess, Progress, fuzz
from bnconform.judging.judge import judge
from bnconform.interfaces.usage import UsageError
from bnconform.caseformat.validation import load_case

EXAMPLES = 600  # drawn examples per search at most; seed 0 finds each planted defect within 400


def _one_pass_between_100_and_1000(original):
    def moments(x, channel_axis):
        mean, var = original(x, channel_axis)
        if mean.size and np.isfinite(mean).all() and 100 <= np.abs(mean).max() < 1000:
            return mutants._moments_in("float32", one_pass=True)(x, channel_axis)
        return mean, var
    return moments


class OffsetBand(mutants.Mutant):
    """Batch moments one-pass in float32 when the largest |mean| is in [100, 1000)."""

    name = "planted.offset_band_one_pass"

    def patches(self, case):
        return {"batch_moments": _one_pass_between_100_and_1000(oracle.batch_moments)}


class Bfloat16Rank5(mutants.Mutant):
    """bfloat16 inputs of rank 5: y without beta."""

    name = "planted.bfloat16_rank5_drops_beta"

    def wrong_results(self, case, results):
        if case.config.input_dtype == "bfloat16" and case.rank == 5 and case.config.center:
            beta = oracle.broadcast(case.initial_state.beta.astype(np.float64), case.rank, case.config.channel_axis)
            for result in results:
                result["y"] = result["y"] - beta
        return results


class ThreeValues(mutants.Mutant):
    """An update from exactly N = 3 values per channel reads decay as the weight on the new batch."""

    name = "planted.n3_momentum_flipped"

    def patches(self, case):
        class Flipped(oracle._RunningState):
            def update(self, mean, var, n):
                self.flip = n == 3
                super().update(mean, var, n)

            def _decay(self):
                decay = super()._decay()
                return 1 - decay if self.flip else decay
        return {"_RunningState": Flipped}


class LastSampleNan(mutants.Mutant):
    """A NaN in the batch's last sample also turns channel 0 of y into NaN."""

    name = "planted.last_sample_nan_leaks"

    def wrong_results(self, case, results):
        for step, result in zip(case.steps, results):
            x = step.x.astype(np.float64)
            if step.is_training and x.shape[0] and np.isnan(x[-1]).any():
                result["y"] = np.array(result["y"])
                index = [slice(None)] * x.ndim
                index[case.config.channel_axis] = 0
                result["y"][tuple(index)] = np.nan
        return results


PLANTED = [OffsetBand, Bfloat16Rank5, ThreeValues, LastSampleNan]


def _fuzz(adapter, tmp_path, **budget):
    budget = {"seconds": 60.0, "max_examples": EXAMPLES, "seed": 0, "max_findings": 1, **budget}
    stream = io.StringIO()
    found = fuzz([InProcess(adapter)], out=tmp_path, stream=stream, progress=Progress(stream=io.StringIO()),
                 **budget)
    return found, stream.getvalue()


@pytest.mark.parametrize("planted", PLANTED, ids=lambda cls: cls.name)
def test_fuzz_finds_a_planted_defect_the_shipped_cases_miss(planted, tmp_path):
    adapter = planted()
    shipped = [c.id for c in mutants.shipped_cases() if judge(adapter, c, "cpu").status == "fail"]
    assert len(shipped) < mutants.MARGIN, f"not a corner case: the shipped cases catch it ({shipped})"
    found, printed = _fuzz(adapter, tmp_path)
    assert len(found) == 1 and printed.count("\n") == 1, printed
    case_path, code_path = found[0].paths
    assert printed.startswith(f"fail {planted.name}: {case_path}: step ")
    case = load_case(case_path)  # a valid case file, under the family it belongs to
    assert case_path.parent.name == case.family and case.id == f"{case.family}/{case_path.stem}"
    assert judge(adapter, case, "cpu").status == "fail"
    assert judge(OracleAdapter(), case, "cpu").status == "pass"
    from bnconform.specs import build

    assert dumps_case(build(runpy.run_path(str(code_path))["SPEC"])) == case_path.read_text(encoding="utf-8")


class Recording(InProcess):
    """The oracle, remembering every example it was asked to judge."""

    def __init__(self):
        super().__init__(OracleAdapter())
        self.asked = []

    def verdict(self, case):
        self.asked.append(dumps_case(case))
        return super().verdict(case)


def test_the_search_is_deterministic_for_a_seed(tmp_path):
    runs = {}
    for label, seed in (("first", 3), ("again", 3), ("other", 4)):
        runs[label] = Recording()
        fuzz([runs[label]], 60.0, 25, seed, tmp_path, stream=io.StringIO(), progress=Progress(stream=io.StringIO()))
    assert len(runs["first"].asked) == 25 and runs["first"].asked == runs["again"].asked
    assert runs["other"].asked != runs["first"].asked


def test_a_right_implementation_has_no_finding(tmp_path):
    found, printed = _fuzz(OracleAdapter(), tmp_path, max_examples=100, max_findings=None)
    assert (found, printed) == ([], "")


def test_an_adapter_that_raises_is_an_error_finding_and_the_progress_line_counts(tmp_path):
    class Raising(Adapter):
        name, framework = "planted.raises_on_n1", "numpy"
        capabilities = OracleAdapter.capabilities

        def run(self, case, device):
            if 1 in case.reduce_counts():
                raise FloatingPointError("variance of one value")
            return oracle.run_case(case)

    progress = Progress(stream=io.StringIO(), interval=0.0)
    found = fuzz([InProcess(Raising())], 60.0, EXAMPLES, 0, tmp_path, stream=io.StringIO(), progress=progress,
                 max_findings=1)
    assert [f.verdict.status for f in found] == ["error"] and "FloatingPointError" in found[0].verdict.detail
    assert 1 in load_case(found[0].paths[0]).reduce_counts()  # shrunk, but still at N = 1
    assert "fuzz planted.raises_on_n1: " in progress.stream.getvalue() and "1 finding(s)" in progress.stream.getvalue()


def test_the_command_runs_a_backend_in_its_host_process(tmp_path, capsys, monkeypatch):
    from bnconform.interfaces import cli

    tests = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])))
    code = cli.main(["fuzz", "--adapter", "faulty_adapters:IgnoresBeta", "--max-examples", "10", "--out",
                     str(tmp_path)])
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert code == 1 and lines[0].startswith("fail wrong.ignores_beta: ") and "finding(s)" in lines[-1], out
    assert "fuzz wrong.ignores_beta: " in out.err  # the progress line
    assert len(list(tmp_path.glob("*/*.json"))) == len(lines) - 1 == len(list(tmp_path.glob("*/*.py")))


def test_without_hypothesis_the_command_names_the_extra(monkeypatch):
    from bnconform.interfaces.fuzz import run_fuzz

    monkeypatch.setitem(sys.modules, "hypothesis", None)
    with pytest.raises(UsageError, match=r"pip install 'bnconform\[test\]'"):
        run_fuzz(None)
