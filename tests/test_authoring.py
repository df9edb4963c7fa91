"""What an outside adapter author meets: names of their own, their own install hint."""

from __future__ import annotations

import ast
import subprocess
import sys
import types

import pytest

from bnconform.adapters import Adapter
from bnconform.adapters.numpy_oracle import OracleAdapter
from bnconform.adapters.registry import RegistryError, load_class


def _module_with(**classes):
    module = types.ModuleType("authoring_example")
    for name, cls in classes.items():
        setattr(module, name, cls)
    sys.modules[module.__name__] = module
    return module


def test_a_subclass_that_inherits_its_parents_name_is_refused():
    class Tweaked(OracleAdapter):  # forgot `name`: its verdicts would merge with numpy.oracle's
        pass

    class Named(OracleAdapter):
        name = "my.oracle"

    _module_with(Tweaked=Tweaked, Named=Named)
    with pytest.raises(RegistryError, match=r"Expected: a class attribute `name` of its own. Received: inherited 'numpy.oracle'"):
        load_class("authoring_example:Tweaked")
    assert load_class("authoring_example:Named") is Named


def test_a_plugin_names_its_own_install_command():
    class Plugin(Adapter):
        name, extra, requires = "mybn", "mybn", ("no_such_module_for_bnconform_tests",)
        install_hint = "pip install mybn-bnconform"

    class Builtin(Adapter):
        name, extra, requires = "x", "torch", ("no_such_module_for_bnconform_tests",)

    assert Plugin().unavailable_reason().endswith("install it with: pip install mybn-bnconform")
    assert "bnconform[mybn]" not in Plugin().unavailable_reason()
    assert Builtin().unavailable_reason().endswith("pip install 'bnconform[torch]'")


# -- cases written by hand: bnconform new / show / validate --oracle ---------------------------------

import json  # noqa: E402
from pathlib import Path  # noqa: E402

from bnconform.interfaces.cli import main  # noqa: E402
from bnconform.judging.judge import judge  # noqa: E402
from bnconform.caseformat.validation import load_case  # noqa: E402

PUBLISHED = Path(__file__).resolve().parents[1] / "examples" / "published"
UPDATING = """id: hand/two_steps
description: a training step with an update, then inference, written by hand
config: {channel_axis: 1, epsilon: 0.001, running_stats: {rule: ema, decay: 0.5, variance: bessel,
         zero_debias: false, num_updates_schedule: false}}
steps:
  - {normalize_with: batch, update_running_stats: true, x: [[0.1, 2], [0.5, -1], [3, 0]]}
  - {normalize_with: running, update_running_stats: false, x: [[1, 1]]}
"""


def test_the_published_case_is_what_new_builds_and_passes_on_the_oracle(tmp_path, capsys):
    out = tmp_path / "case.json"
    assert main(["new", str(PUBLISHED / "keras_inference_so47567655.yaml"), "--expect", "given", "-o", str(out)]) == 0
    assert out.read_text() == (PUBLISHED / "keras_inference_so47567655.json").read_text()
    printed = capsys.readouterr().out
    assert "half a unit of the last printed digit" in printed and "outputs: y" in printed
    case = load_case(out)
    assert sorted(case.steps[0].expected) == ["y"] and not case.config.running_stats.stated
    assert judge(OracleAdapter(), case, "cpu").compared == ["y"]


def test_show_then_new_round_trips_exactly(tmp_path, capsys):
    source = tmp_path / "hand.yaml"
    source.write_text(UPDATING)
    first = tmp_path / "first.json"
    assert main(["new", str(source), "-o", str(first)]) == 0
    capsys.readouterr()
    assert main(["show", str(first)]) == 0
    shown = tmp_path / "shown.yaml"
    shown.write_text(capsys.readouterr().out)
    second = tmp_path / "second.json"
    assert main(["new", str(shown), "--expect", "given", "-o", str(second)]) == 0
    assert json.loads(second.read_text()) == json.loads(first.read_text())


def test_validate_oracle_names_the_knob_that_explains_a_difference(tmp_path, capsys):
    source = tmp_path / "hand.yaml"
    source.write_text(UPDATING)
    case_file = tmp_path / "hand.json"
    assert main(["new", str(source), "-o", str(case_file)]) == 0
    obj = json.loads(case_file.read_text())
    obj["config"]["running_stats"]["variance"] = "biased"  # the knob now contradicts the numbers
    case_file.write_text(json.dumps(obj))
    capsys.readouterr()
    assert main(["validate", "--oracle", str(case_file)]) == 1
    err = capsys.readouterr().err
    assert "running_var" in err and "running_stats.variance = 'bessel' (the knob says 'biased')" in err


def test_new_rejects_a_bad_description_in_one_line(tmp_path, capsys):
    source = tmp_path / "bad.yaml"
    source.write_text(UPDATING.replace("[[1, 1]]", "[[1, oops]]"))
    assert main(["new", str(source)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "/steps/1/x: Expected: numbers" in err[0]


_PEAK_OF_CHILD = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(done.returncode, round(peak_mib), repr(done.stderr))
"""


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path):
    """60 KB of YAML whose aliases make x a 10000 x 10000 array (before: 59 s and 7.8 GB, then a
    MemoryError): one line, exit 2, no case written, and the command's peak memory (its own
    process alone, measured by a wrapper whose only child it is) far below 1 GiB."""
    row = "[" + ", ".join(["0"] * 10000) + "]"
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(f"id: bomb/x\ndescription: d\nrow: &r {row}\nsteps:\n  - x: [{', '.join(['*r'] * 10000)}]\n")
    out = tmp_path / "bomb.json"
    done = subprocess.run([sys.executable, "-c", _PEAK_OF_CHILD, sys.executable, "-m", "bnconform", "new", str(bomb),
                           "-o", str(out)], capture_output=True, text=True, timeout=300, cwd=PUBLISHED.parents[1])
    code, peak_mib, stderr = done.stdout.split(" ", 2)
    stderr = ast.literal_eval(stderr.strip())
    assert code == "2" and len(stderr.strip().splitlines()) == 1, stderr
    assert "at most 1,000,000 values once YAML aliases are expanded" in stderr and "bomb.yaml" in stderr
    assert int(peak_mib) < 1024 and not out.exists(), (peak_mib, out.exists())


def test_a_recursive_yaml_alias_is_one_line(tmp_path, capsys):
    source = tmp_path / "loop.yaml"
    source.write_text("id: x/y\ndescription: d\nsteps: &s [*s]\n")
    assert main(["new", str(source)]) == 2
    assert "an alias inside its own anchor" in capsys.readouterr().err


def test_the_docs_example_builds_as_a_plugin_and_runs_through_its_entry_point(tmp_path):
    """examples/my_numpy_bn.py (the docs' worked example, verbatim) packaged with its own pyproject,
    built into a wheel, unpacked onto PYTHONPATH (the venv is not touched) and found by entry point."""
    import shutil
    import subprocess
    import zipfile

    package = tmp_path / "mybn"
    package.mkdir()
    shutil.copy(Path(__file__).resolve().parents[1] / "examples" / "my_numpy_bn.py", package / "mybn_plugin.py")
    (package / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "mybn-plugin"\nversion = "0.1"\n[tool.setuptools]\npy-modules = ["mybn_plugin"]\n'
        '[project.entry-points."bnconform.adapters"]\n"example.my_numpy_bn" = "mybn_plugin:MyNumpyBN"\n')
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "wheels"), str(package)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    site = tmp_path / "site"
    zipfile.ZipFile(next((tmp_path / "wheels").glob("*.whl"))).extractall(site)
    case = Path(__file__).resolve().parents[1] / "cases" / "formulas" / "rank2_nc_train.json"
    env = {**__import__("os").environ, "PYTHONPATH": str(site)}
    run = subprocess.run([sys.executable, "-m", "bnconform", "check", str(case), "--backend", "example.my_numpy_bn"],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0 and "1 conform" in run.stdout, run.stdout + run.stderr
