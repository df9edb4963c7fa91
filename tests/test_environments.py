"""Backends in Python environments of their own (bnconform.execution.environments), built with uv.

Each test builds into a temporary BNCONFORM_ENVS folder, in a subprocess (environment overrides
and lru caches are per process). The environments hold only bnconform's base requirements, which
uv installs from its cache in about a second; the offline test gives uv an empty cache, so
nothing can be downloaded, the way a machine without a registry sees it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bnconform.adapters.environment import MARKER, PythonEnvironment
from bnconform.execution.environments import uv_command

pytestmark = pytest.mark.skipif(uv_command() is None, reason="uv is not installed (pip install uv)")
ROOT = Path(__file__).resolve().parents[1]

RUN_ORACLE = """
import collections, json, sys
from pathlib import Path
from bnconform.adapters.environment import PythonEnvironment
from bnconform.execution import environments
from bnconform.execution.plan import discover_cases, plan
from bnconform.execution.scheduler import run_cells
environments.run_in("numpy.oracle", PythonEnvironment("test-oracle", tuple(sys.argv[1:])))
cases = discover_cases(Path(%r) / "cases", ["formulas"])
verdicts, infos = run_cells(plan(cases, ["numpy.oracle"], ["cpu"]), jobs=1)
print(json.dumps({"statuses": collections.Counter(v.status for v in verdicts),
                  "details": sorted({v.detail for v in verdicts if v.status != "pass"}),
                  "version": infos.get("numpy.oracle", {}).get("version")}))
""" % str(ROOT)


def _run(code: str, envs: Path, *args: str, extra_env=None) -> dict:
    env = {**os.environ, "BNCONFORM_ENVS": str(envs), **(extra_env or {})}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "stderr": done.stderr}


def test_a_backend_runs_in_its_own_environment_with_its_own_versions(tmp_path):
    """numpy.oracle in an environment pinning NumPy 1.26.4 (this one has NumPy 2): every cell passes
    and the report carries the environment's version, not this process's."""
    result = _run(RUN_ORACLE, tmp_path, "numpy==1.26.4")
    assert result["statuses"] == {"pass": sum(1 for _ in (ROOT / "cases" / "formulas").glob("*.json"))}
    assert result["version"] == "1.26.4"
    assert "building the environment test-oracle" in result["stderr"]
    built = [p for p in tmp_path.iterdir() if p.is_dir() and p.name.startswith("test-oracle-")]
    record = json.loads((built[0] / MARKER).read_text())
    assert record["packages"]["numpy"] == "1.26.4"
    again = _run(RUN_ORACLE, tmp_path, "numpy==1.26.4")  # reused: no second build
    assert "building the environment" not in again["stderr"]


def test_an_environment_that_cannot_be_built_costs_only_its_cells(tmp_path):
    """No registry (uv offline with an empty cache): every cell of that backend is unavailable with
    one line naming the environment and uv's error; the failure is remembered, not retried."""
    offline = {"UV_OFFLINE": "1", "UV_CACHE_DIR": str(tmp_path / "empty-uv-cache")}
    result = _run(RUN_ORACLE, tmp_path / "envs", "numpy==1.26.4", extra_env=offline)
    assert set(result["statuses"]) == {"unavailable"}
    [detail] = result["details"]
    assert "\n" not in detail and "its environment test-oracle" in detail and "numpy" in detail, detail
    assert "cannot be built: uv pip install failed: No solution found" in detail, detail
    assert list((tmp_path / "envs").glob("*.failed")) and not list((tmp_path / "envs").glob(f"*/{MARKER}"))


def test_a_half_built_environment_is_built_again(tmp_path, monkeypatch):
    """A folder without the marker (an interrupted build) is never used: ensure() rebuilds it."""
    from bnconform.execution import environments

    monkeypatch.setenv("BNCONFORM_ENVS", str(tmp_path))
    env = PythonEnvironment("half", ())
    (env.path / "bin").mkdir(parents=True)
    (env.path / "bin" / "python").write_text("not an interpreter")
    interpreter = environments.ensure(env)
    done = subprocess.run([str(interpreter), "-c", "import numpy, ml_dtypes, jsonschema, yaml"], check=False)
    assert done.returncode == 0 and env.ready()


def test_two_processes_building_one_environment_share_one_build(tmp_path):
    """Two builders at once (two xdist workers): the lock makes one build and the other reuse it."""
    code = """
    import json, sys
    from bnconform.adapters.environment import PythonEnvironment
    from bnconform.execution import environments
    lines = []
    environments.ensure(PythonEnvironment("shared", ()), log=lines.append)
    print(json.dumps({"built": len(lines)}))
    """
    env = {**os.environ, "BNCONFORM_ENVS": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    builds = [json.loads(p.communicate(timeout=600)[0].strip().splitlines()[-1])["built"] for p in procs]
    assert sorted(builds) == [0, 1]


def test_a_sweep_pin_replaces_the_declared_one():
    env = PythonEnvironment("legacy", ("tensorflow==2.12.1", "numpy<1.24"))
    pinned = env.with_pins({"tensorflow": "2.11.1"}, "tensorflow-2.11.1", ("pillow<10",))
    assert pinned.requirements == ("numpy<1.24", "tensorflow==2.11.1", "pillow<10")
    assert pinned.key != env.key and pinned.path.name.startswith("tensorflow-2.11.1-")


def test_two_selections_merge_into_one_report(tmp_path):
    """The CI matrix of docs/environments.md: jobs run selections separately, a last job merges their
    results.json with `bnconform report` into one report holding every cell of both."""
    from bnconform.interfaces.cli import main
    from bnconform.reporting.results import read

    for family in ("formulas", "epsilon"):
        assert main(["run", "--backend", "numpy.oracle", "--family", family, "--cases", str(ROOT / "cases"),
                     "--out", str(tmp_path / family)]) == 0
    merged = tmp_path / "merged"
    assert main(["report", str(tmp_path / "formulas" / "results.json"), str(tmp_path / "epsilon" / "results.json"),
                 "--output", str(merged / "conformance.md"), "--merged", str(merged / "results.json")]) == 0
    families = {v["family"] for v in read(merged / "results.json")["verdicts"]}
    expected = sum(1 for f in ("formulas", "epsilon") for _ in (ROOT / "cases" / f).glob("*.json"))
    assert families == {"formulas", "epsilon"} and len(read(merged / "results.json")["verdicts"]) == expected
    assert (merged / "conformance.md").read_text().count("numpy.oracle") > 0
