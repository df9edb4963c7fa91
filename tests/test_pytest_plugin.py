"""The pytest plugin: case files are test files, ids read path::backend-device, presettled cells
skip without a host, outcomes map verdict -> pytest status, bad options fail once, reports go
to a partial directory for a partial selection."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASE = "cases/degenerate/c1_rank2.json"


def pytest_run(*args, env=None):
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
                   **(env or {})}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:randomly", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=environment)


def test_case_file_items_are_named_path_backend_device_and_select_with_k():
    listed = pytest_run("--collect-only", "-q", CASE, "--bn-backend", "numpy.oracle", "--bn-backend", "torch",
                        "--bn-device", "cpu")
    ids = [line for line in listed.stdout.splitlines() if "::" in line]
    assert ids == [f"{CASE}::numpy.oracle-cpu", f"{CASE}::torch.functional-cpu", f"{CASE}::torch.nn-cpu"], listed.stdout
    picked = pytest_run("--collect-only", "-q", CASE, "--bn-backend", "numpy.oracle", "--bn-backend", "torch",
                        "--bn-device", "cpu", "-k", "torch.nn")
    assert [line for line in picked.stdout.splitlines() if "::" in line] == [f"{CASE}::torch.nn-cpu"]


def test_bad_option_fails_once_with_one_line():
    result = pytest_run(CASE, "--bn-backend", "pytorch")
    assert result.returncode == 4, result
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(errors) == 1 and "unknown backend 'pytorch'" in errors[0], errors


def test_verdicts_map_to_pytest_outcomes_and_reports_go_to_a_partial_directory(tmp_path):
    marker = tmp_path / "ran"
    result = pytest_run(CASE, "cases/degenerate/n1_rank2_train.json", "-rfsx", "--bn-reports", tmp_path / "reports",
                        "--bn-backend", "numpy.oracle", "--bn-adapter", "faulty_adapters:RaisingAdapter",
                        "--bn-adapter", "faulty_adapters:MissingFrameworkAdapter",
                        "--bn-adapter", "faulty_adapters:StaleDeviationAdapter",
                        env={"BNCONFORM_TEST_MARKER": str(marker)})
    out = result.stdout
    assert result.returncode == 1, out
    assert "error: RuntimeError: kernel exploded [degenerate/c1_rank2[faulty_adapters:RaisingAdapter-cpu]]" in out
    assert "fail: declared deviation not observed (n1-raises" in out
    assert "unavailable: bnconform_no_such_framework is not installed" in out
    assert "3 failed, 3 passed, 2 skipped" in out, out.splitlines()[-1]
    assert not marker.exists()  # the unavailable cells never reached a host
    written = [p.parent for p in (tmp_path / "reports").rglob("results.json")]
    assert len(written) == 1 and written[0].parent.name == "partial", written


def test_declared_deviation_is_an_xfail_naming_the_deviation_and_its_kind(tmp_path):
    result = pytest_run("cases/degenerate/n1_rank2_train.json", "--bn-backend", "torch.nn", "--bn-device", "cpu",
                        "-rx", "--bn-reports", tmp_path)
    xfails = [line for line in result.stdout.splitlines() if line.startswith("XFAIL")]
    assert result.returncode == 0 and len(xfails) == 1, result.stdout
    assert "declared deviation single-value-per-channel-raises (edge)" in xfails[0]


def test_each_host_runs_on_one_xdist_worker(tmp_path):
    result = pytest_run("-n", "2", "-v", "cases/degenerate", "--bn-backend", "torch", "--bn-backend", "numpy.oracle",
                        "--bn-device", "cpu", "--bn-reports", tmp_path)
    workers = {}
    for line in result.stdout.splitlines():  # "[gw0] [ 93%] PASSED cases/x.json::torch.nn-cpu@torch..."
        ran = re.match(r"\[(gw\d+)\] \[ *\d+%\] (PASSED|XFAIL|FAILED) \S+::(\S+)-cpu", line)
        if ran:
            workers.setdefault(ran.group(3).replace("functional", "nn"), set()).add(ran.group(1))
    assert set(workers) == {"torch.nn", "numpy.oracle"}, result.stdout[-2000:]
    assert all(len(ran_on) == 1 for ran_on in workers.values()), workers


def test_an_existing_reports_directory_as_option_value_keeps_the_matrix(tmp_path):
    """pytest takes `--bn-reports DIR` (DIR existing) for a path when it picks the rootdir, which
    then lands in DIR without the project's configfile; the case files must still be collected."""
    listed = pytest_run("--collect-only", "-q", "--bn-backend", "numpy.oracle", "--bn-family", "degenerate",
                        "--bn-reports", tmp_path)
    assert "cases/degenerate/c1_rank2.json::numpy.oracle-cpu" in listed.stdout, listed.stdout[-1500:]
