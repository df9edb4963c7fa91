"""CLI behaviour: one clear line and exit 2 for bad input; reports, merge and diff round trip."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASE = ROOT / "cases" / "degenerate" / "c1_rank2.json"


def bnconform(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "bnconform", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def _one_clear_line(result, *fragments):
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert all(f in lines[0] for f in fragments), lines[0]


def test_unknown_backend_lists_known_ones():
    _one_clear_line(bnconform("run", "--backend", "pytorch"), "unknown backend 'pytorch'", "numpy.oracle", "torch.nn")


def test_bad_adhoc_adapter_path():
    _one_clear_line(bnconform("check", CASE, "--adapter", "nowhere.at_all:Nope"), "nowhere.at_all:Nope", "Expected")
    _one_clear_line(bnconform("check", CASE, "--adapter", "json:JSONDecoder"), "subclass of bnconform.adapters.Adapter")


def test_check_missing_file_and_invalid_case(tmp_path):
    _one_clear_line(bnconform("check", tmp_path / "absent.json", "--backend", "numpy.oracle"), "absent.json", "no such path")
    bad = tmp_path / "bad.json"
    bad.write_text(CASE.read_text().replace('"format_version": 1', '"format_version": 7'))
    _one_clear_line(bnconform("check", bad, "--backend", "numpy.oracle"), "bad.json", "/format_version")


def test_check_exit_codes(tmp_path):
    assert bnconform("check", CASE, "--backend", "numpy.oracle").returncode == 0
    wrong = bnconform("check", CASE, "--adapter", "faulty_adapters:IgnoresBeta", cwd=ROOT / "tests")
    assert wrong.returncode == 1 and "fail" in wrong.stdout


def test_unknown_family_is_named(tmp_path):
    _one_clear_line(bnconform("run", "--backend", "numpy.oracle", "--family", "nope", "--reports", tmp_path), "--family", "nope")


def test_run_report_merge_and_diff(tmp_path):
    first = bnconform("run", "--backend", "numpy.oracle", "--family", "epsilon", "--reports", tmp_path / "a")
    assert first.returncode == 0, first.stderr
    report = (tmp_path / "a" / "conformance.md").read_text()
    assert "numpy.oracle" in report and "Python" in report and "## Where frameworks disagree" in report
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert bnconform("diff", tmp_path / "a" / "results.json", tmp_path / "b" / "results.json").returncode == 0
    changed = json.loads((tmp_path / "b" / "results.json").read_text())
    changed["verdicts"][0].update(status="fail", detail="step 0: y[0]=1, but should be 2")
    (tmp_path / "b" / "results.json").write_text(json.dumps(changed))
    diff = bnconform("diff", tmp_path / "a" / "results.json", tmp_path / "b" / "results.json")
    assert diff.returncode == 1 and "pass -> fail" in diff.stdout
    merged = bnconform("report", tmp_path / "a" / "results.json", tmp_path / "b" / "results.json", "-o", tmp_path / "m.md")
    assert merged.returncode == 0 and "1✗" in (tmp_path / "m.md").read_text()


def test_report_rejects_non_results_file(tmp_path):
    junk = tmp_path / "junk.json"
    junk.write_text("[1, 2]")
    _one_clear_line(bnconform("report", junk, "-o", tmp_path / "x.md"), "junk.json", "Expected: a results document")


def test_import_bnconform_imports_no_framework():
    code = ("import sys, bnconform, bnconform.cli, bnconform.adapters.registry, bnconform.pytest_plugin;"
            "print(sorted(m for m in ('torch','tensorflow','jax','keras','flax','onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
