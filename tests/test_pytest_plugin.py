"""The pytest plugin: case files are test files, ids read path::backend-device, presettled cells
skip without a host, outcomes map verdict -> pytest status, bad options fail once, reports go
to a partial directory for a partial selection.

Runs that start no host (collection, a bad option) are nested ``pytest.main`` calls in this
process; runs that reach hosts are real ``python -m pytest`` processes. One ``-n 2`` run of two
case files serves three tests (outcomes and reports, the declared deviation's xfail, one worker
per host): a process and a torch import each instead of three."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# One worker runs the module, so its module-scoped -n 2 run happens once per run, not per worker.
pytestmark = pytest.mark.xdist_group("pytest_plugin")

ROOT = Path(__file__).resolve().parents[1]
CASE = "cases/degenerate/c1_rank2.json"
N1 = "cases/degenerate/n1_rank2_train.json"


# Auto-loaded plugins that play no part in these runs: ~0.25 s CPU of imports per pytest process.
UNRELATED_PLUGINS = ("-p", "no:randomly", "-p", "no:hypothesispytest", "-p", "no:jaxtyping", "-p", "no:anyio")


def pytest_run(*args, env=None):
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
                   **(env or {})}
    return subprocess.run([sys.executable, "-m", "pytest", *UNRELATED_PLUGINS, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=environment)


@pytest.fixture
def pytest_inprocess(capsys, monkeypatch):
    """``pytest ARGS`` from the checkout, as a nested session in this process: (exit code, the
    lines it wrote to stdout and stderr)."""
    def run(*args):
        monkeypatch.chdir(ROOT)
        capsys.readouterr()
        # the outer session imported the plugin already: the inner one cannot assert-rewrite it
        code = pytest.main(["-p", "no:randomly", "-W", "ignore::pytest.PytestAssertRewriteWarning", *map(str, args)])
        out, err = capsys.readouterr()
        return code, out.splitlines() + err.splitlines()
    return run


TORCH = ("--bn-backend", "torch.nn", "--bn-backend", "torch.functional")  # not the family: it grows


def test_case_file_items_are_named_path_backend_device_and_select_with_k(pytest_inprocess):
    code, listed = pytest_inprocess("--collect-only", "-q", CASE, "--bn-backend", "numpy.oracle", *TORCH,
                                    "--bn-device", "cpu")
    ids = [line for line in listed if "::" in line]
    assert code == 0 and ids == [f"{CASE}::numpy.oracle-cpu", f"{CASE}::torch.functional-cpu", f"{CASE}::torch.nn-cpu"], listed
    code, picked = pytest_inprocess("--collect-only", "-q", CASE, "--bn-backend", "numpy.oracle", *TORCH,
                                    "--bn-device", "cpu", "-k", "torch.nn")
    assert [line for line in picked if "::" in line] == [f"{CASE}::torch.nn-cpu"], picked


def test_bad_option_fails_once_with_one_line(pytest_inprocess):
    code, lines = pytest_inprocess(CASE, "--bn-backend", "pytorch")
    errors = [line for line in lines if line.strip()]
    assert code == 4, lines
    assert len(errors) == 1 and "unknown backend 'pytorch'" in errors[0], errors


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """Two case files x (torch.nn, torch.functional, numpy.oracle and three faulty ad hoc adapters)
    on two xdist workers: (the finished process, its reports directory, the marker file that a
    host running the unavailable adapter would write)."""
    tmp = tmp_path_factory.mktemp("two_workers")
    marker = tmp / "ran"
    result = pytest_run("-n", "2", "-v", CASE, N1, "-rfsx", "--bn-reports", tmp / "reports",
                        *TORCH, "--bn-backend", "numpy.oracle", "--bn-device", "cpu",
                        "--bn-adapter", "faulty_adapters:RaisingAdapter",
                        "--bn-adapter", "faulty_adapters:MissingFrameworkAdapter",
                        "--bn-adapter", "faulty_adapters:StaleDeviationAdapter",
                        env={"BNCONFORM_TEST_MARKER": str(marker)})
    return result, tmp / "reports", marker


def test_verdicts_map_to_pytest_outcomes_and_reports_go_where_bn_reports_says(two_workers):
    result, reports, marker = two_workers
    out = result.stdout
    assert result.returncode == 1, out
    assert "error: RuntimeError: kernel exploded [degenerate/c1_rank2[test.raising-cpu]]" in out
    assert "fail: declared deviation not observed (n1-raises" in out
    assert "unavailable: bnconform_no_such_framework is not installed" in out
    # failed: RaisingAdapter x 2, the stale n1 deviation; passed: numpy.oracle x 2, StaleDeviation
    # on c1, torch x 2 on c1; skipped: the unavailable adapter x 2; xfailed: torch x 2 on n1
    assert "3 failed, 5 passed, 2 skipped, 2 xfailed" in out, out.splitlines()[-1]
    assert not marker.exists()  # the unavailable cells never reached a host
    written = [p.parent for p in reports.rglob("results.json")]
    assert written == [reports], written  # --bn-reports DIR is `bnconform run --out DIR`


def test_each_adapters_host_info_reaches_the_report_though_sent_once_per_worker(two_workers):
    """A worker attaches an adapter's host info (version, devices, defaults) to its first cell's
    report only; the report still names them for every adapter that ran, as `bnconform run` does."""
    adapters = json.loads((two_workers[1] / "results.json").read_text())["adapters"]
    for name in ("torch.nn", "torch.functional", "numpy.oracle"):
        assert adapters[name]["version"] not in ("", "?") and adapters[name]["devices"] == ["cpu"], adapters[name]
    assert adapters["torch.nn"]["defaults"] == {"decay_parameter": 0.1, "epsilon": 1e-05}, adapters["torch.nn"]["defaults"]


def test_declared_deviation_is_an_xfail_naming_the_deviation_and_its_kind(two_workers):
    xfails = [line for line in two_workers[0].stdout.splitlines() if line.startswith("XFAIL")]
    torch_nn = [line for line in xfails if f"{N1}::torch.nn-cpu" in line]
    assert len(xfails) == 2 and len(torch_nn) == 1, xfails
    assert "declared deviation single-value-per-channel-raises (edge)" in torch_nn[0]


def test_each_host_runs_on_one_xdist_worker(two_workers):
    workers = {}
    for line in two_workers[0].stdout.splitlines():  # "[gw0] [ 93%] PASSED cases/x.json::torch.nn-cpu@torch..."
        ran = re.match(r"\[(gw\d+)\] \[ *\d+%\] (PASSED|XFAIL|FAILED) \S+::(\S+)-cpu", line)
        if ran:
            workers.setdefault(_host_of(ran.group(3)), set()).add(ran.group(1))
    assert set(workers) == {"torch", "numpy.oracle", "faulty_adapters"}, two_workers[0].stdout[-2000:]
    assert all(len(ran_on) == 1 for ran_on in workers.values()), workers


def _host_of(adapter: str) -> str:
    """The host an adapter's cells run in: torch.nn and torch.functional share one, and so do
    the faulty adapters (one module, no environment; their names start with "test.")."""
    return "faulty_adapters" if adapter.startswith("test.") else re.sub(r"^torch\..*", "torch", adapter)


def test_an_existing_reports_directory_as_option_value_keeps_the_matrix(tmp_path):
    """pytest takes `--bn-reports DIR` (DIR existing) for a path when it picks the rootdir, which
    then lands in DIR without the project's configfile; the case files must still be collected.
    (--ignore=tests: without testpaths the run collects the whole checkout, and importing every
    unit-test module is not the point; an `=` value is never taken for a path.)"""
    listed = pytest_run("--collect-only", "-q", "--bn-backend", "numpy.oracle", "--bn-family", "degenerate",
                        "--bn-reports", tmp_path, "--ignore=tests")
    assert "cases/degenerate/c1_rank2.json::numpy.oracle-cpu" in listed.stdout, listed.stdout[-1500:]


def test_a_projects_own_cases_folder_is_not_taken_for_vectors(tmp_path):
    """A project with bnconform installed and a ``cases/`` folder of its own JSON runs its own
    tests: that folder is not a case root (its first JSON file does not open as a case file), so
    none of its files is collected as a case."""
    (tmp_path / "cases" / "fixtures").mkdir(parents=True)
    (tmp_path / "cases" / "fixtures" / "request.json").write_text('{"name": "a fixture of the project"}')
    (tmp_path / "test_own.py").write_text("def test_own():\n    assert True\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", *UNRELATED_PLUGINS, "-p", "no:cacheprovider"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "1 passed" in done.stdout and "request.json" not in done.stdout, done.stdout[-1500:]


def test_a_case_root_is_recognized_by_its_first_case_file(tmp_path):
    from bnconform.caseformat.shipped_data import default_cases, holds_cases

    assert holds_cases(ROOT / "cases") and not holds_cases(tmp_path / "absent")
    (tmp_path / "cases" / "family").mkdir(parents=True)
    assert not holds_cases(tmp_path / "cases")  # empty
    (tmp_path / "cases" / "family" / "a.json").write_text('{"format_version": 1, "id": "family/a"}')
    assert holds_cases(tmp_path / "cases") and default_cases(tmp_path) == tmp_path / "cases"
    (tmp_path / "cases" / "family" / "0.json").write_text('[1, 2, 3]')
    assert not holds_cases(tmp_path / "cases") and default_cases(tmp_path) != tmp_path / "cases"
