"""CLI behaviour: one clear line and exit 2 for bad input; reports, merge and diff round trip.

Most tests call ``cli.main`` -- what the console script runs -- in this process (its return value
is the exit status; argparse's SystemExit is caught like the interpreter would); hosts are still
real processes. test_console_script_* run the installed script and ``python -m bnconform`` for the
process-level promise: the exit status, and one line on stderr with no traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import one_error_line

from bnconform.interfaces import cli

ROOT = Path(__file__).resolve().parents[1]
CASE = ROOT / "cases" / "degenerate" / "c1_rank2.json"


@pytest.fixture
def bnconform(capsys, monkeypatch):
    """``bnconform ARGS`` in this process, from ``cwd``: returncode, stdout, stderr."""
    def run(*args, cwd=ROOT):
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        try:
            code = cli.main(list(map(str, args)))
        except SystemExit as exc:  # argparse: --help, --version, bad syntax
            code = exc.code
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)
    return run


def _process(*command, cwd=ROOT):
    return subprocess.run([*map(str, command)], cwd=cwd, capture_output=True, text=True, timeout=300)


def _one_clear_line(result, *fragments):
    one_error_line(result.returncode, result.stderr, *fragments)


def test_unknown_backend_lists_known_ones(bnconform):
    _one_clear_line(bnconform("run", "--backend", "pytorch"), "unknown backend 'pytorch'", "numpy.oracle", "torch.nn")


def test_bad_adhoc_adapter_path(bnconform):
    _one_clear_line(bnconform("check", CASE, "--adapter", "nowhere.at_all:Nope"), "nowhere.at_all:Nope", "Expected")
    _one_clear_line(bnconform("check", CASE, "--adapter", "json:JSONDecoder"), "subclass of bnconform.adapters.Adapter")


def test_check_missing_file_and_invalid_case(bnconform, tmp_path):
    _one_clear_line(bnconform("check", tmp_path / "absent.json", "--backend", "numpy.oracle"), "absent.json", "no such path")
    bad = tmp_path / "bad.json"
    bad.write_text(CASE.read_text().replace('"format_version": 1', '"format_version": 7'))
    _one_clear_line(bnconform("check", bad, "--backend", "numpy.oracle"), "bad.json", "/format_version")


def test_console_script_exit_status_is_mains_and_an_error_is_one_line():
    """The installed script (user error: 2, one line, no traceback, nothing else on stderr) and
    ``python -m bnconform`` (a failing check: 1) exit with what main returns."""
    script = Path(sys.executable).with_name("bnconform")
    if script.exists():  # an installed checkout; `python -m` below covers the rest everywhere
        _one_clear_line(_process(script, "run", "--backend", "pytorch"), "unknown backend 'pytorch'", "torch.nn")
    wrong = _process(sys.executable, "-m", "bnconform", "check", CASE, "--adapter", "faulty_adapters:IgnoresBeta",
                     cwd=ROOT / "tests")
    assert wrong.returncode == 1 and "fail" in wrong.stdout, wrong


def test_check_exit_codes(bnconform, tmp_path):
    assert bnconform("check", CASE, "--backend", "numpy.oracle").returncode == 0
    wrong = bnconform("check", CASE, "--adapter", "faulty_adapters:IgnoresBeta", cwd=ROOT / "tests")
    assert wrong.returncode == 1 and "fail" in wrong.stdout


def test_unknown_family_is_named(bnconform, tmp_path):
    _one_clear_line(bnconform("run", "--backend", "numpy.oracle", "--family", "nope", "--reports", tmp_path), "--family", "nope")


def test_run_report_merge_and_diff(bnconform, tmp_path):
    first = bnconform("run", "--backend", "numpy.oracle", "--family", "epsilon", "--out", tmp_path / "a")
    assert first.returncode == 0, first.stderr
    report = (tmp_path / "a" / "conformance.md").read_text()
    assert "numpy.oracle" in report and "Python" in report
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert bnconform("diff", tmp_path / "a" / "results.json", tmp_path / "b" / "results.json").returncode == 0
    changed = json.loads((tmp_path / "b" / "results.json").read_text())
    changed["verdicts"][0].update(status="fail", detail="step 0: y[0]=1, but should be 2")
    (tmp_path / "b" / "results.json").write_text(json.dumps(changed))
    diff = bnconform("diff", tmp_path / "a" / "results.json", tmp_path / "b" / "results.json")
    assert diff.returncode == 1 and "pass -> fail" in diff.stdout
    merged = bnconform("report", tmp_path / "a" / "results.json", tmp_path / "b" / "results.json", "-o", tmp_path / "m.md")
    assert merged.returncode == 0 and "1✗" in (tmp_path / "m.md").read_text()


def test_report_rejects_non_results_file(bnconform, tmp_path):
    junk = tmp_path / "junk.json"
    junk.write_text("[1, 2]")
    _one_clear_line(bnconform("report", junk, "-o", tmp_path / "x.md"), "junk.json", "Expected: a results document")


def test_import_bnconform_imports_no_framework(fresh_imports):
    assert fresh_imports["cli"]["frameworks"] == [], fresh_imports


# --- selection: families, globs, --adapter alone, did-you-mean -------------------------------

ORACLE_PATH = "bnconform.adapters.numpy_oracle:OracleAdapter"


def test_family_glob_and_exact_selection():
    from bnconform.adapters.registry import known
    from bnconform.execution.selection import select_backends

    # a family is every registered row under the prefix, compiled and exported ones (torch.nn+compile) included
    torch_rows = select_backends(["torch"], [])
    assert torch_rows == [n for n in known() if n.startswith("torch.")]
    assert {"torch.functional", "torch.gloo_sync", "torch.nn", "torch.nn.SyncBatchNorm", "torch.nn+compile"} <= set(torch_rows)
    assert select_backends(["torch.nn"], []) == ["torch.nn"]  # not also torch.nn.SyncBatchNorm or torch.nn+compile
    assert select_backends(["keras3.*"], []) == [n for n in known() if n.startswith("keras3.")]
    assert {"keras3.jax", "keras3.jax.DataParallel", "keras3.tensorflow+jit_compile"} <= set(select_backends(["keras3.*"], []))
    assert select_backends(["keras3.tensorflow"], []) == ["keras3.tensorflow"]  # not also .synchronized
    assert select_backends(["flax.linen"], []) == ["flax.linen"]  # an exact name is not also a family
    assert select_backends(["flax.linen*"], []) == ["flax.linen", "flax.linen.exact_variance"]
    assert select_backends([], []) == list(known())


def test_adapter_alone_runs_only_that_adapter(bnconform, tmp_path):
    from bnconform.execution.selection import select_backends

    # an ad hoc path is selected under its class's own name, the one its cells and reports carry
    assert select_backends([], [ORACLE_PATH]) == ["numpy.oracle"]
    assert select_backends(["torch.nn"], [ORACLE_PATH]) == ["torch.nn", "numpy.oracle"]
    done = bnconform("run", "--adapter", ORACLE_PATH, "--family", "epsilon", "--out", tmp_path)
    assert done.returncode == 0, done.stderr
    assert {v["adapter"] for v in json.loads((tmp_path / "results.json").read_text())["verdicts"]} == {"numpy.oracle"}


def test_misspelt_backend_or_family_suggests_the_nearest(bnconform):
    from bnconform.adapters.registry import known

    torch_rows, keras_rows = ([n for n in known() if n.startswith(prefix)] for prefix in ("torch.", "keras3."))
    _one_clear_line(bnconform("run", "--backend", "torhc"), "unknown backend 'torhc'",
                    f"Did you mean: {', '.join(torch_rows)}?", "Expected one of:")
    _one_clear_line(bnconform("check", CASE, "--backend", "kears3"), "unknown backend 'kears3'", ", ".join(keras_rows))


def test_bad_device_and_bad_results_file(bnconform, tmp_path):
    from bnconform.reporting import results

    _one_clear_line(bnconform("check", CASE, "--backend", "torch.nn", "--device", "gpu"), "--device", "'gpu'", "cuda")
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"format": results.RESULTS_FORMAT, "verdicts": [1], "runs": [], "adapters": {}}))
    _one_clear_line(bnconform("diff", odd, odd), "odd.json", "Expected")
    _one_clear_line(bnconform("report", tmp_path / "absent.json", "-o", tmp_path / "x.md"), "absent.json")


def test_devices_default_to_those_present():
    from bnconform.execution.selection import SelectionError, nvidia_present, select_devices

    expected = ["cpu", "cuda", "cuda-nocudnn"] if nvidia_present() else ["cpu"]
    assert select_devices(None, ["torch.nn"]) == expected
    assert select_devices(["cuda"], ["torch.nn"]) == ["cuda"]  # asked for: planned even where absent
    try:
        select_devices(["cuda"], ["numpy.oracle"])
    except SelectionError as exc:
        assert "Expected: one of cpu" in str(exc)
    else:
        raise AssertionError("numpy.oracle declares no cuda device")


# --- check exit codes -------------------------------------------------------------------------


def test_check_conforms_with_an_absent_device(bnconform):
    from bnconform.execution.selection import nvidia_present

    done = bnconform("check", CASE, "--backend", "torch", "--device", "cpu", "--device", "cuda")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("pass") and "[torch.nn-cpu]" in line for line in lines)
    assert any("[torch.functional-cpu]" in line for line in lines)
    cuda = [line for line in lines if "-cuda]" in line]
    assert any("[torch.nn-cuda]" in line for line in cuda) and any("[torch.functional-cuda]" in line for line in cuda)
    assert nvidia_present() or all(line.startswith("unavailable") for line in cuda)


def test_check_exits_1_when_nothing_could_run(bnconform):
    ghost = ROOT / "cases" / "ghost" / "bessel_per_ghost_batch.json"  # torch has no ghost batches
    done = bnconform("check", ghost, "--backend", "torch.nn")
    assert done.returncode == 1, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "nothing could run" in lines[0] and "virtual_batch_size" in lines[0], done.stderr


def test_check_help_states_the_exit_codes(bnconform):
    text = " ".join(bnconform("check", "--help").stdout.split())
    assert "exit 0 when every cell that could run conforms" in text
    assert "1 when a cell fails or errors or nothing could run" in text and "2 for invalid input" in text


def test_run_torch_family_exits_0(bnconform, tmp_path):
    from bnconform.execution.selection import select_backends

    done = bnconform("run", "--backend", "torch", "--family", "epsilon", "--out", tmp_path, "--jobs", "2")
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["adapters"]) == set(select_backends(["torch"], []))  # eager, compiled and exported rows
    # the CUDA-only row never vanishes: on a machine without a GPU its cells say why they did not run
    sync = {v["status"] for v in results["verdicts"] if v["adapter"] == "torch.nn.SyncBatchNorm"}
    assert sync <= {"unavailable", "unsupported", "pass", "deviation"} and sync


# --- where reports go -------------------------------------------------------------------------


def _snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.glob("*") if p.is_file()}


def test_partial_run_writes_under_partial_and_leaves_reports_untouched(bnconform, tmp_path):
    reports = tmp_path / "reports"
    done = bnconform("run", "--backend", "numpy.oracle", "--family", "epsilon", "--reports", reports)
    assert done.returncode == 0, done.stderr
    assert not (reports / "results.json").exists() and not (reports / "conformance.md").exists()
    written = reports / "partial" / "backend-numpy.oracle__family-epsilon"
    assert {"results.json", "conformance.md"} <= set(_snapshot(written))
    before = _snapshot(ROOT / "reports")
    slug = ROOT / "reports" / "partial" / "backend-numpy.oracle__family-epsilon"
    try:
        assert bnconform("run", "--backend", "numpy.oracle", "--family", "epsilon").returncode == 0
        assert _snapshot(ROOT / "reports") == before and (slug / "results.json").exists()
    finally:
        shutil.rmtree(slug, ignore_errors=True)
    ignored = subprocess.run(["git", "check-ignore", "-q", "reports/partial/x/results.json"], cwd=ROOT)
    assert ignored.returncode == 0, "reports/partial/ must be gitignored"


def test_only_the_whole_matrix_writes_reports(tmp_path):
    from bnconform.adapters.registry import known
    from bnconform.reporting.writing import report_dir
    from bnconform.execution.selection import is_whole_matrix

    everything = list(known())
    assert is_whole_matrix(everything, None)
    assert not is_whole_matrix(everything[1:], None)
    assert not is_whole_matrix([*everything, ORACLE_PATH], None)
    assert not is_whole_matrix(everything, ["epsilon"], all_families=["epsilon", "ghost"])
    assert is_whole_matrix(everything, ["epsilon", "ghost"], all_families=["epsilon", "ghost"])
    document = {"runs": [{"selection": {"backend": ["keras3.*"]}}], "adapters": {}, "verdicts": []}
    assert report_dir(document, tmp_path, True) == tmp_path
    assert report_dir(document, tmp_path, False) == tmp_path / "partial" / "backend-keras3.any"
    assert report_dir(document, tmp_path, False, out=tmp_path / "mine") == tmp_path / "mine"


def test_interrupt_is_one_line_130_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from bnconform.interfaces import cli, subcommands as commands

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "_run_cells", interrupted)
    code = cli.main(["run", "--backend", "numpy.oracle", "--family", "epsilon", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 130 and err[-1] == "bnconform: interrupted; no reports written" and "Traceback" not in "".join(err)
    assert not (tmp_path / "out").exists()


# --- list from metadata, and no import circle ---------------------------------------------------

FRAMEWORKS = ("torch", "tensorflow", "jax", "keras", "flax", "haiku", "equinox", "onnxruntime", "tf_keras")


def test_list_answers_from_metadata_fast_without_importing_frameworks():
    code = ("import io, sys, time, contextlib; t = time.perf_counter(); from bnconform.interfaces.cli import main;"
            "buf = io.StringIO();\nwith contextlib.redirect_stdout(buf): rc = main(['list'])\n"
            f"print(rc, round(time.perf_counter() - t, 3), sorted(m for m in {FRAMEWORKS!r} if m in sys.modules));"
            "print(buf.getvalue())")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    rc, seconds, imported = done.stdout.splitlines()[0].split(" ", 2)
    assert rc == "0" and imported == "[]", done.stdout + done.stderr
    assert float(seconds) < 3.0, seconds
    rows = {line.split()[0]: line for line in done.stdout.splitlines()[2:] if line.strip()}
    assert "torch" in rows["torch.nn"] and "installed" in rows["torch.nn"] and "built-in" in rows["torch.nn"]


def test_list_names_the_extra_for_a_missing_distribution():
    from bnconform.execution.selection import missing_module

    assert missing_module(("numpy", "no_such_framework_xyz.sub")) == "no_such_framework_xyz.sub"
    assert missing_module(("numpy",)) is None


def test_commands_does_not_import_cli(fresh_imports):
    assert fresh_imports["commands"]["bnconform.interfaces.cli"] is False, fresh_imports  # the first stage: nothing before it
