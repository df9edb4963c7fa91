"""A wheel is enough: built from this tree, installed into a fresh environment that holds only
bnconform's own requirements (numpy, ml_dtypes, jsonschema, pyyaml), pytest and pytest-xdist, and run from an
empty directory, it finds the shipped vectors, passes them on the NumPy oracle, and writes its
reports into that directory, never into the installed package.

The environment is a ``venv --without-pip`` whose requirements are links to the test
environment's installed distributions (the requirement closure, read with importlib.metadata),
so the test needs no network and no framework can leak in.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "bnconform", "cases", "backends"]
UNSHIPPED = shutil.ignore_patterns("node_modules", "build", "__pycache__", "*.egg-info", ".bnconform.lock")


def _run(command, cwd, timeout=600, **extra_env) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYTEST", "BNCONFORM"))}
    env.update(extra_env)
    return subprocess.run(command, check=False, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def _build_wheel(tmp: Path) -> Path:
    """The wheel of a copy of this tree (so the build writes nothing into the checkout)."""
    tree = tmp / "tree"
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tree / name, ignore=UNSHIPPED)
        else:
            tree.mkdir(exist_ok=True)
            shutil.copy2(source, tree / name)
    done = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                 "-w", str(tmp / "dist"), str(tree)], cwd=tmp)
    assert done.returncode == 0, done.stderr
    return next((tmp / "dist").glob("bnconform-*.whl"))


def _closure(names) -> list[importlib.metadata.Distribution]:
    """The installed distributions ``names`` need, their requirements' requirements included
    (markers evaluated here, extras not followed)."""
    found, todo = {}, list(names)
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in found:
            continue
        found[name] = importlib.metadata.distribution(name)
        for text in found[name].requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return list(found.values())


def _link_requirements(into: Path, names) -> None:
    """Link the top-level modules and metadata of every distribution in the closure into ``into``."""
    into.mkdir()
    for dist in _closure(names):
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            source = Path(dist.locate_file(top))
            if source.exists() and not (into / top).exists():
                (into / top).symlink_to(source)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> dict:
    """{"python", "bin", "package", "work"}: an environment with the built wheel and nothing else
    but bnconform's requirements and pytest, and an empty working directory."""
    tmp = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(tmp)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    done = _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                 str(wheel)], cwd=tmp)
    assert done.returncode == 0, done.stderr
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp).stdout.strip())
    requirements = [Requirement(r).name for r in importlib.metadata.requires("bnconform") if "extra" not in r]
    _link_requirements(tmp / "requirements", [*requirements, "pytest", "pytest-xdist"])
    (site / "requirements.pth").write_text(str(tmp / "requirements") + "\n")
    (tmp / "work").mkdir()
    return {"python": python, "bin": venv / "bin", "package": site / "bnconform", "work": tmp / "work",
            "tmp": tmp}


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if "__pycache__" not in p.parts}


def _shipped_case_count() -> int:
    return sum(1 for p in (ROOT / "cases").rglob("*.json") if p.name != "schema.json")


def test_the_wheel_ships_vectors_schema_and_backends(fresh):
    data = fresh["package"] / "_data"
    assert len([p for p in (data / "cases").rglob("*.json") if p.name != "schema.json"]) == _shipped_case_count()
    assert (data / "backends" / "c_reference" / "bn.c").is_file()
    assert (data / "backends" / "tfjs" / "backend.js").is_file()
    assert not (data / "backends" / "tfjs" / "node_modules").exists()
    found = _run([str(fresh["python"]), "-c", "import bnconform, torch"], fresh["work"])
    assert "No module named 'torch'" in found.stderr  # no framework leaked into the fresh environment


def test_check_runs_the_shipped_cases_from_an_empty_directory(fresh):
    before = _files(fresh["package"])
    done = _run([str(fresh["bin"] / "bnconform"), "check", "--backend", "numpy.oracle"], fresh["work"])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.splitlines()[-1].startswith(f"{_shipped_case_count()} conform, 0 fail/error"), done.stdout[-500:]
    assert _files(fresh["package"]) == before  # nothing written beside the installed package


def test_pytest_runs_the_shipped_cases_and_reports_here(fresh):
    before = _files(fresh["package"])
    done = _run([str(fresh["python"]), "-m", "pytest", "-n", "2", "-p", "bnconform", "--bn-backend", "numpy.oracle",
                 "-q", "-p", "no:cacheprovider"], fresh["work"])  # xdist workers parse the command line again
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    passed = int(re.search(r"(\d+) passed", done.stdout).group(1))
    assert passed >= _shipped_case_count() >= 468
    written = json.loads((fresh["work"] / "reports" / "partial" / "backend-numpy.oracle" / "results.json").read_text())
    assert written["adapters"]["numpy.oracle"]["framework"] == "numpy"
    assert _files(fresh["package"]) == before


def test_a_plain_pytest_in_a_project_collects_no_shipped_cells(fresh):
    """bnconform installed in a project's environment must not add 18,720 cells to its own tests."""
    (fresh["tmp"] / "project").mkdir(exist_ok=True)
    (fresh["tmp"] / "project" / "test_own.py").write_text("def test_own():\n    assert True\n")
    done = _run([str(fresh["python"]), "-m", "pytest", "-q", "-p", "no:cacheprovider"], fresh["tmp"] / "project")
    assert done.returncode == 0 and "1 passed" in done.stdout and "bnconform:" not in done.stdout, done.stdout[-1500:]


def test_run_writes_into_the_current_directory(fresh):
    done = _run([str(fresh["bin"] / "bnconform"), "run", "--backend", "numpy.oracle", "--family", "momentum"],
                fresh["work"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert (fresh["work"] / "reports" / "partial" / "backend-numpy.oracle__family-momentum" / "conformance.md").is_file()


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler named cc here")
def test_the_shipped_c_kernel_is_built_into_the_user_cache_not_the_package(fresh):
    before = _files(fresh["package"])
    cache = fresh["tmp"] / "cache"
    done = _run([str(fresh["bin"] / "bnconform"), "run", "--backend", "c.reference", "--family", "momentum",
                 "--out", fresh["work"] / "c"], fresh["work"], XDG_CACHE_HOME=str(cache))
    assert done.returncode == 0, done.stderr[-2000:]
    verdicts = json.loads((fresh["work"] / "c" / "results.json").read_text())["verdicts"]
    assert {v["status"] for v in verdicts} <= {"pass", "unsupported"} and any(v["status"] == "pass" for v in verdicts)
    assert list(cache.glob("bnconform/builds/*/build/bn")) and _files(fresh["package"]) == before
