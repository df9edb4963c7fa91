"""A backend that aborts, hangs or raises costs only its own cells; the run finishes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bnconform.execution.plan import discover_cases, plan
from bnconform.execution.scheduler import run_cells

ROOT = Path(__file__).resolve().parents[1]
TESTS = str(ROOT / "tests")


@pytest.fixture(autouse=True)
def _importable_in_workers(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [TESTS, os.environ.get("PYTHONPATH")])))


def _cases(*ids):
    return [c for c in discover_cases(ROOT / "cases") if c.id in ids]


def test_crashing_backend_costs_only_its_own_cells():
    cases = _cases("formulas/rank2_nc_train", "formulas/gamma_zero_train", "degenerate/c1_rank2")
    cells = plan(cases, ["faulty_adapters:CrashingAdapter", "numpy.oracle"])
    verdicts, _ = run_cells(cells, jobs=2, timeout=60)
    by_cell = {(v.adapter, v.case): v for v in verdicts}
    crashed = [by_cell[("test.crashing", c)] for c in ("formulas/rank2_nc_train", "formulas/gamma_zero_train")]
    assert all(v.status == "error" and "SIGABRT" in v.detail for v in crashed)
    # The worker restarts after the crash: the next case of the same backend still runs.
    assert by_cell[("test.crashing", "degenerate/c1_rank2")].status == "pass"
    assert all(v.status == "pass" for v in verdicts if v.adapter == "numpy.oracle")


def test_hanging_backend_times_out_and_recovers():
    cases = _cases("degenerate/c1_rank2", "degenerate/c1_rank4_nhwc")
    # 1 s per cell: the host's start and adapter load run under the separate startup timeout, so
    # the next (tiny) case after the restart needs milliseconds of it; a worker idles for the rest
    verdicts, _ = run_cells(plan(cases, ["faulty_adapters:HangingAdapter"]), jobs=1, timeout=1)
    statuses = {v.case: (v.status, v.detail) for v in verdicts}
    assert statuses["degenerate/c1_rank2"][0] == "error" and "no answer within 1 s" in statuses["degenerate/c1_rank2"][1]
    assert statuses["degenerate/c1_rank4_nhwc"][0] == "pass"


def test_a_backend_allocating_without_end_is_killed_at_the_host_memory_limit(monkeypatch):
    monkeypatch.setenv("BNCONFORM_HOST_MEMORY_MB", "600")  # the numpy-only host holds ~60 MB
    cases = _cases("degenerate/c1_rank2", "degenerate/c1_rank4_nhwc")
    verdicts, _ = run_cells(plan(cases, ["faulty_adapters:AllocatingAdapter"]), jobs=1, timeout=120)
    statuses = {v.case: (v.status, v.detail) for v in verdicts}
    status, detail = statuses["degenerate/c1_rank2"]
    assert status == "error" and "over the per-host limit of 0.59 GiB" in detail, detail
    assert statuses["degenerate/c1_rank4_nhwc"][0] == "pass"  # a fresh host serves the next cell


def test_a_host_killed_mid_cell_costs_that_cell(tmp_path, monkeypatch):
    """SIGKILL from outside (the OOM killer, an operator) while a cell runs: that cell is an error
    naming the signal; the next cell of the backend runs in a fresh host."""
    import threading

    hanging = tmp_path / "hanging"
    monkeypatch.setenv("BNCONFORM_TEST_MARKER", str(hanging))
    cases = _cases("degenerate/c1_rank2", "degenerate/c1_rank4_nhwc")
    found = {}
    runner = threading.Thread(target=lambda: found.update(
        verdicts=run_cells(plan(cases, ["faulty_adapters:HangingAdapter"]), jobs=1, timeout=600)[0]))
    runner.start()
    deadline = time.monotonic() + 120
    while not hanging.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    hosts = _host_children(os.getpid(), "faulty_adapters:HangingAdapter")  # not the matrix's own hosts
    assert hanging.exists() and len(hosts) == 1, f"Expected: one host hanging in its cell. Received: {hosts}"
    os.kill(hosts[0], signal.SIGKILL)
    runner.join(timeout=120)
    statuses = {v.case: (v.status, v.detail) for v in found["verdicts"]}
    assert statuses["degenerate/c1_rank2"][0] == "error" and "SIGKILL" in statuses["degenerate/c1_rank2"][1]
    assert statuses["degenerate/c1_rank4_nhwc"][0] == "pass"


def test_raising_backend_gives_one_line_errors():
    verdicts, _ = run_cells(plan(_cases("degenerate/c1_rank2"), ["faulty_adapters:RaisingAdapter"]), jobs=1)
    assert verdicts[0].status == "error"
    assert verdicts[0].detail == "RuntimeError: kernel exploded"


def test_stale_deviation_fails_instead_of_passing():
    verdicts, _ = run_cells(plan(_cases("degenerate/n1_rank2_train"), ["faulty_adapters:StaleDeviationAdapter"]), jobs=1)
    assert verdicts[0].status == "fail"
    assert verdicts[0].detail.startswith("declared deviation not observed (n1-raises")


def test_shared_host_serves_several_adapters_and_a_crash_costs_only_the_cell_in_flight():
    # Both faulty adapters live in one module with no environment: one host serves both.
    cases = _cases("formulas/rank2_nc_train", "degenerate/c1_rank2")
    cells = plan(cases, ["faulty_adapters:CrashingAdapter", "faulty_adapters:RaisingAdapter"])
    verdicts, infos = run_cells(cells, jobs=1, timeout=60)
    by_cell = {(v.adapter, v.case): v for v in verdicts}
    assert by_cell[("test.crashing", "formulas/rank2_nc_train")].status == "error"
    assert by_cell[("test.crashing", "degenerate/c1_rank2")].status == "pass"
    assert all(by_cell[("test.raising", c)].detail == "RuntimeError: kernel exploded" for c in
               ("formulas/rank2_nc_train", "degenerate/c1_rank2"))
    assert set(infos) == {"faulty_adapters:CrashingAdapter", "faulty_adapters:RaisingAdapter"}


def _host_children(pid: int, serving: str = "") -> list[int]:
    """Host processes whose parent is ``pid`` and whose command line names ``serving`` (read from /proc, Linux)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except (OSError, IndexError):
            continue
        if int(stat[1]) == pid and b"bnconform.execution.host" in command and serving.encode() in command:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return stat[0] != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
@pytest.mark.parametrize("signum, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_an_interrupted_run_kills_the_hosts_and_writes_nothing(tmp_path, monkeypatch, signum, code, word):
    """Ctrl-C and SIGTERM (a CI job cancelled, a container stopped) take the same way out: every
    host killed, one line, no reports, exit 130 or 143 (128 + the signal)."""
    hanging = tmp_path / "hanging"  # HangingAdapter writes it as it starts hanging in its cell
    monkeypatch.setenv("BNCONFORM_TEST_MARKER", str(hanging))
    command = [sys.executable, "-m", "bnconform", "run", "--adapter", "faulty_adapters:HangingAdapter",
               "--family", "degenerate", "--reports", str(tmp_path / "reports"), "--timeout", "600"]
    # SIGINT at its default, whatever this pytest inherited: a shell starts background jobs with SIGINT
    # ignored, and Python then installs no KeyboardInterrupt handler in the run it starts.
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not (hosts := _host_children(proc.pid)) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert hosts, "the run never started a host process"
    while not hanging.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert hanging.exists(), "the host never reached the hanging cell"
    os.kill(proc.pid, signum)
    try:
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr and word in stderr.strip().splitlines()[-1]
    assert not (tmp_path / "reports").exists()
    assert not [pid for pid in hosts if _alive(pid)]



def test_an_adapter_that_patches_its_framework_runs_in_a_host_of_its_own():
    """tf_slim+compat restores removed TensorFlow names process-wide; sharing the TF1 graph host,
    it made the plain tf_slim row's probe pass whenever one of its cells ran first (found by a
    randomly ordered pytest run: 187 cells turned from unavailable into pass or deviation)."""
    from bnconform.execution.plan import host_key

    assert host_key("tf_slim+compat") == "tf_slim+compat"
    assert host_key("tf.v1.layers") != host_key("tf_slim+compat")


def test_an_adapter_with_an_environment_of_its_own_never_shares_a_host_with_the_main_environment():
    """The real tf_slim runs in the legacy TensorFlow 2.12 environment: its host key names that
    environment, so it is never served by the TensorFlow 2.21 host of tf.v1.layers."""
    from bnconform.execution.environments import environment_of
    from bnconform.execution.plan import host_key

    env = environment_of("tf_slim")
    assert env is not None and host_key("tf_slim").endswith(f"@{env.label}-{env.key}")
    assert host_key("tf_slim") != host_key("tf.v1.layers") and host_key("tflearn") != host_key("tf_slim")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
def test_closing_the_pytest_plugins_pool_leaves_none_of_its_hosts_running():
    """Hosts.close kills every host and then reaps each: none is left running or a zombie."""
    from bnconform.execution.controller import Hosts

    hosts = Hosts(cell_timeout=60)
    for name in ("numpy.oracle", "faulty_adapters:RaisingAdapter"):
        hosts.for_adapter(name).info(name)
    pids = [process.proc.pid for process in hosts.processes.values()]
    assert len(pids) == 2 and all(_alive(pid) for pid in pids)
    hosts.close()
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids), pids
