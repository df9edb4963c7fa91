"""``bnconform validate --tolerances``: the audit of the per-element bounds (bnconform.interfaces.tolerance_audit).

Each situation is built by hand: a case described here and encoded by ``bnconform new``, and a
catalogue of fake mutants written to tmp_path, whose distance from the bound is known by
construction: halfway between y's rounding room and its bound (beyond what rounding explains,
inside what the rounded mean of a 1e3 offset adds), or 1000 away.
"""

from __future__ import annotations

import json
import re
import textwrap

import pytest
from conftest import one_error_line

from bnconform.caseformat.validation import load_case
from bnconform.interfaces.cli import main
from bnconform.interfaces.tolerance_audit import OutputAudit, audit_case, load_mutants, reasons

_CONFIG = {"channel_axis": 1, "epsilon": 0.001, "input_dtype": "float32", "param_dtype": "float32"}
_STATE = {"gamma": [1.5, 0.5], "beta": [0.25, -1], "running_mean": [0, 0], "running_var": [1, 1]}
_X = [[1000.1, 1], [1002, 3], [1004, -5], [1001, 2.3]]  # channel 0: a 1e3 offset (its mean's rounding shows in y)
PLAIN = {"id": "hand/plain", "description": "a float32 training step that updates, channel 0 offset by 1e3",
         "config": {**_CONFIG, "running_stats": {"rule": "ema", "decay": 0.9, "variance": "bessel"}},
         "initial_state": _STATE, "steps": [{"normalize_with": "batch", "update_running_stats": True, "x": _X}]}
# N = 2 per channel: training dx is O(eps / var) after a cancellation of terms O(|dy| / sigma),
# which a float32 implementation cannot resolve: its bound exceeds its scale, and it is named
# zero by construction (dx of groups of N <= 2, docs/case-format.md).
N2 = {"id": "hand/n2", "description": "two samples: dx cancels down to O(eps / var)",
      "config": {**_CONFIG, "epsilon": 1e-5}, "initial_state": {"gamma": [1], "beta": [0], "running_mean": [0],
                                                               "running_var": [1]},
      "steps": [{"normalize_with": "batch", "update_running_stats": False, "x": [[0], [1]], "dy": [[1], [3]]}]}
# dy constant per channel: dx and dgamma are zero by construction (the oracle's float64 gives
# 0 or 1e-16 noise); one sample: the batch variance is exactly 0.
ZERO = {"id": "hand/zero", "description": "dy constant per channel, then a batch of one sample",
        "config": _CONFIG, "initial_state": _STATE,
        "steps": [{"normalize_with": "batch", "update_running_stats": False, "x": _X, "dy": [[1, 2]] * 4},
                  {"normalize_with": "batch", "update_running_stats": False, "x": [[3, 7]]}]}

FAKE_MUTANTS = '''
import numpy as np
from bnconform.adapters.base import Adapter
from bnconform.adapters.numpy_oracle import OracleAdapter
from bnconform.reference import oracle


class _Fake(Adapter):
    framework, capabilities = "numpy", OracleAdapter.capabilities

    def change(self, step):
        pass

    def run(self, case, device):
        results = oracle.run_case(case)
        for index, step in enumerate(results):
            self.change(step)
            self.shift_y(case, index, step)
        return results

    def shift_y(self, case, index, step):
        pass


def _halfway(case, index, y):
    """y moved halfway from its rounding room to its bound, on every element."""
    from bnconform.reference.bounds import element_bound, rounding_room

    bound = element_bound(case, index, "y", y, case.steps[index].tolerance["y"])
    return y + (rounding_room(case, index, "y", y) + bound) / 2


class Tiny(_Fake):
    """y halfway between its rounding room and its bound: only the rounded-mean term admits it."""
    name = "fake.tiny"

    def shift_y(self, case, index, step):
        step["y"] = _halfway(case, index, step["y"])


class TinyButWrongRunningMean(Tiny):
    """The same y, but a running mean off by 1: the case catches it there."""
    name = "fake.tiny_wrong_running_mean"

    def change(self, step):
        step["running_mean"] = step["running_mean"] + 1


class Garbage(_Fake):
    name = "fake.garbage"

    def change(self, step):
        step["y"] = step["y"] + 1000


class Raises(_Fake):
    name = "fake.raises"

    def run(self, case, device):
        raise RuntimeError("this mutant cannot run")


CATALOGUE = [Tiny, TinyButWrongRunningMean, Garbage, Raises]
'''


def _case_file(tmp_path, description: dict):
    """The case file ``bnconform new`` encodes from ``description`` (every output from the oracle)."""
    source = tmp_path / f"{description['id'].split('/')[1]}.yaml.json"
    source.write_text(json.dumps(description))
    target = tmp_path / f"{description['id'].split('/')[1]}.json"
    assert main(["new", str(source), "-o", str(target)]) == 0
    return target


@pytest.fixture
def fake_mutants(tmp_path):
    path = tmp_path / "fake_mutants_for_audit.py"
    path.write_text(textwrap.dedent(FAKE_MUTANTS))
    return path


def _audit(capsys, *argv) -> tuple[int, list[str], str]:
    """(exit status, stdout lines, stderr) of the audit of ``argv`` (what came before is dropped)."""
    capsys.readouterr()
    code = main(["validate", "--tolerances", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out.strip().splitlines(), err


def _line(lines, step: int, output: str) -> str:
    found = [line for line in lines if re.match(rf"hand/\w+ step {step} {output}:", line)]
    assert len(found) == 1, lines
    return found[0]


def test_a_mutant_inside_the_bound_is_admitted_and_garbage_is_not(tmp_path, fake_mutants, capsys):
    code, lines, _ = _audit(capsys, _case_file(tmp_path, PLAIN), "--mutants", fake_mutants)
    y = _line(lines, 0, "y")
    assert code == 1
    assert "nearest fake.tiny at " in y and "FLAG bound exceeds scale" not in y
    assert "FLAG admits fake.tiny here (not caught by this case)" in y
    assert "FLAG admits fake.tiny_wrong_running_mean here (caught by step 0 running_mean)" in y
    assert "garbage" not in y and "raises" not in " ".join(lines)
    distance = float(re.search(r"nearest fake.tiny at ([0-9.e+-]+) bounds", y).group(1))
    assert 0 < distance <= 1  # halfway to the bound: (room + bound) / 2 / bound, printed to 3 digits
    mean = _line(lines, 0, "running_mean")  # only the mutant off by 1 differs there, far outside
    assert "FLAG" not in mean and re.search(r"nearest fake.tiny_wrong_running_mean at [0-9.e+]+ bounds", mean)
    assert "no mutant differs" in _line(lines, 0, "batch_var")
    assert lines[-1].startswith("5 outputs of 1 cases audited in ")
    assert "0 flagged for scale" in lines[-1]
    assert lines[-1].endswith("2 admitted mutants (1 outputs, 4 mutants; 1 not caught by their case; "
                              "1 mutant runs skipped)")  # fake.raises


def test_without_admissions_or_wide_bounds_nothing_is_flagged(tmp_path, capsys, monkeypatch):
    """No tests/mutants.py under the current directory: no mutant columns, said once; exit 0."""
    case = _case_file(tmp_path, PLAIN)
    monkeypatch.chdir(tmp_path)
    code, lines, _ = _audit(capsys, case)
    assert code == 0
    assert lines[0].startswith("no mutant columns: no tests/mutants.py here")
    assert sum("no mutant columns" in line for line in lines) == 1
    assert all("nearest" not in line and "FLAG" not in line for line in lines)
    assert lines[-1].endswith("0 flagged for scale (0 zero by construction, not flagged); no mutants")


def test_dx_of_two_values_per_group_is_wider_than_its_scale_and_named_zero_by_construction(tmp_path, capsys,
                                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, lines, _ = _audit(capsys, _case_file(tmp_path, N2))
    dx = _line(lines, 0, "dx")
    bound, scale = (float(v) for v in re.search(r"bound ([0-9.e+-]+), scale ([0-9.e+-]+)", dx).groups())
    assert code == 0 and bound > scale > 1e-6 and dx.endswith("; zero by construction") and "FLAG" not in dx
    assert "0 flagged for scale" in lines[-1]


def test_a_bound_wider_than_its_output_is_flagged():
    wide = OutputAudit("hand/x", 0, "y", bound=2.0, scale=1.0)
    assert wide.too_wide and wide.flagged and reasons(wide) == ["FLAG bound exceeds scale (2x)"]
    zero = OutputAudit("hand/x", 0, "dx", bound=2.0, scale=1e-17, zero=True)
    assert not zero.flagged and reasons(zero) == ["zero by construction"]


def test_outputs_zero_by_construction_are_named_not_flagged(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, lines, _ = _audit(capsys, _case_file(tmp_path, ZERO))
    for step, output in ((0, "dx"), (0, "dgamma"), (1, "batch_var")):
        line = _line(lines, step, output)
        assert line.endswith("; zero by construction") and "FLAG" not in line, line
    assert "zero by construction" not in _line(lines, 0, "dbeta")  # sum |dy|: not cancelled
    assert code == 0


def test_flagged_only_prints_the_flagged_lines_and_the_summary(tmp_path, fake_mutants, capsys):
    paths = [_case_file(tmp_path, PLAIN), _case_file(tmp_path, N2)]
    code, lines, _ = _audit(capsys, *paths, "--mutants", fake_mutants, "--flagged-only")
    assert code == 1
    assert all("FLAG" in line for line in lines[:-1]) and len(lines) >= 2
    assert {line.split(":")[0] for line in lines[:-1]} == {"hand/plain step 0 y"}
    assert lines[-1].startswith("13 outputs of 2 cases audited")


def test_each_mutant_runs_once_per_case(tmp_path, fake_mutants):
    mutants = load_mutants(fake_mutants)
    calls = []
    for mutant in mutants:
        original = mutant.run
        mutant.run = lambda case, device, run=original, name=mutant.name: calls.append(name) or run(case, device)
    audits, skipped = audit_case(load_case(_case_file(tmp_path, ZERO)), mutants)
    assert len(audits) == 13 and skipped == 1 and sorted(calls) == sorted(m.name for m in mutants)


@pytest.mark.parametrize("argv, needles", [
    (["validate", "--tolerances", "--mutants", "no/such/mutants.py"], ["--mutants", "no/such/mutants.py", "Expected:"]),
    (["validate", "--mutants", "tests/mutants.py"], ["--tolerances", "Expected:"]),
    (["validate", "--tolerances", "--oracle"], ["--oracle", "Expected:"]),
])
def test_bad_input_is_one_line_and_exit_2(argv, needles, capsys):
    code = main(argv)
    one_error_line(code, capsys.readouterr().err, *needles)


def test_a_mutant_file_without_a_catalogue_is_bad_input(tmp_path, capsys):
    path = tmp_path / "no_catalogue_here.py"
    path.write_text("MUTANTS = []\n")
    code = main(["validate", "--tolerances", "--mutants", str(path), str(_case_file(tmp_path, PLAIN))])
    one_error_line(code, capsys.readouterr().err, "--mutants", "CATALOGUE", "AttributeError")


def test_the_default_catalogue_is_tests_mutants_py_under_the_current_directory(tmp_path, capsys, monkeypatch):
    """It may import its siblings by name (as tests/mutants.py imports mutants_extensions)."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "mutants.py").write_text(textwrap.dedent(FAKE_MUTANTS) + "\nimport audit_sibling\n")
    (tmp_path / "tests" / "audit_sibling.py").write_text("from mutants import CATALOGUE, Tiny\nCATALOGUE.remove(Tiny)\n")
    case = _case_file(tmp_path, PLAIN)
    monkeypatch.chdir(tmp_path)
    code, lines, _ = _audit(capsys, case)
    y = _line(lines, 0, "y")
    assert code == 1 and "admits fake.tiny_wrong_running_mean here" in y and "fake.tiny here" not in y
    assert "3 mutants" in lines[-1]
