"""What goes wrong around the reports costs nothing else: a directory that cannot be written or a
disk that fills up leaves the previous report intact, a second run for the same reports is
refused at once, and a truncated results.json is one line for report, diff and port."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import one_error_line

from bnconform.interfaces.cli import main
from bnconform.reporting import writing

ROOT = Path(__file__).resolve().parent.parent
TESTS = str(ROOT / "tests")
RUN = ["run", "--backend", "numpy.oracle", "--family", "degenerate", "--jobs", "1"]


@pytest.fixture(autouse=True)
def in_the_checkout(monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [TESTS, os.environ.get("PYTHONPATH")])))


def _previous_report(directory: Path) -> dict[str, bytes]:
    """A report already in ``directory`` (a real one, from the oracle's own run); its files' bytes."""
    assert main([*RUN, "--out", str(directory)]) == 0
    return _files(directory)


def _files(directory: Path) -> dict[str, bytes]:
    """Every file's bytes but the lock's (which names the pid that last held it)."""
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.name != ".bnconform.lock"}


def _one_line(capsys, code: int, *needles: str) -> str:
    return one_error_line(code, capsys.readouterr().err, *needles, after_progress=True)


@pytest.mark.parametrize("fault", ["disk full while staging", "read-only at the rename", "read-only directory"])
def test_a_report_that_cannot_be_written_leaves_the_previous_one(tmp_path, monkeypatch, capsys, fault):
    """As root, chmod does not stop a write: the faults are the OSErrors the system would raise,
    injected where it would raise them."""
    out = tmp_path / "reports"
    before = _previous_report(out)
    capsys.readouterr()
    if fault == "disk full while staging":
        real_write = writing._stage

        def stage_then_fill(document, staging, with_results=True):
            real_write(document, staging, with_results)  # some pages are staged; the next write fails
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(staging / "heatmap.svg"))
        monkeypatch.setattr(writing, "_stage", stage_then_fill)
    elif fault == "read-only at the rename":
        def read_only(source, target):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(target))
        monkeypatch.setattr(writing.os, "replace", read_only)
    else:
        real_mkdir = Path.mkdir

        def read_only_mkdir(self, *args, **kwargs):
            if self.name == ".pages.tmp":
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
            return real_mkdir(self, *args, **kwargs)
        monkeypatch.setattr(Path, "mkdir", read_only_mkdir)
    line = _one_line(capsys, main([*RUN, "--out", str(out)]), str(out), "unchanged")
    assert "reports not written" in line
    assert _files(out) == before  # nothing half-replaced, no staging left


def test_a_second_run_for_the_same_reports_is_refused_at_once(tmp_path, capsys):
    out = tmp_path / "reports"
    before = _previous_report(out)
    hanging = tmp_path / "hanging"
    env = {**os.environ, "BNCONFORM_TEST_MARKER": str(hanging)}
    first = subprocess.Popen([sys.executable, "-m", "bnconform", "run", "--adapter", "faulty_adapters:HangingAdapter",
                              "--family", "degenerate", "--out", str(out), "--timeout", "600"],
                             cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not hanging.exists() and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert hanging.exists(), "the first run never reached its hanging cell"
        capsys.readouterr()
        line = _one_line(capsys, main([*RUN, "--out", str(out)]), str(out), f"process {first.pid} holds")
        assert "--out DIR" in line
    finally:
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=60)
    assert first.returncode == 143, stderr
    assert _files(out) == before


def test_runs_for_different_reports_do_not_wait_for_each_other(tmp_path, capsys):
    """The lock is per directory: a run writing elsewhere (its own --out, another partial selection) goes on."""
    from bnconform.reporting.report_lock import reserved

    with reserved(tmp_path / "busy"):
        assert main([*RUN, "--out", str(tmp_path / "free")]) == 0
        assert (tmp_path / "free" / "results.json").exists()


@pytest.mark.parametrize("command", ["report", "diff", "port"])
def test_a_truncated_results_file_is_one_line(tmp_path, capsys, command):
    whole = (ROOT / "reports" / "results.json").read_bytes()
    truncated = tmp_path / "results.json"
    truncated.write_bytes(whole[: len(whole) // 2])
    argv = {"report": ["report", truncated, "-o", tmp_path / "pages" / "x.md"], "diff": ["diff", truncated, truncated],
            "port": ["port", "torch.nn", "keras3.jax", "--results", truncated]}[command]
    _one_line(capsys, main([str(a) for a in argv]), str(truncated), "Expected: a bnconform results.json")
    assert not (tmp_path / "pages").exists()
