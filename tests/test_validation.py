"""Every case file is valid; every malformed one fails with one clear line naming where.

The malformed fixtures in tests/malformed/ are written by tests/malformed/make_malformed.py,
each from a real case broken in one way; BREAKAGES there names the location each error must give.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from bnconform import cli
from bnconform.validation import check_meaning, load_case

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "cases"
MALFORMED = ROOT / "tests" / "malformed"
CASE_FILES = sorted(p for p in CASES.rglob("*.json") if p.name != "schema.json")


def _load_fixture_script():
    spec = importlib.util.spec_from_file_location("make_malformed", MALFORMED / "make_malformed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAKE = _load_fixture_script()
BREAKAGES = {b.name: b for b in MAKE.BREAKAGES}


@pytest.fixture(scope="module")
def schema_validator():
    schema = json.loads((CASES / "schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("path", CASE_FILES, ids=lambda p: p.relative_to(CASES).as_posix())
def test_case_file_is_schema_valid_and_meaningful(path, schema_validator):
    obj = json.loads(path.read_text(encoding="utf-8"))
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in schema_validator.iter_errors(obj)]
    assert not errors, errors
    check_meaning(load_case(path))


def test_at_least_twelve_malformed_fixtures():
    assert len(BREAKAGES) >= 12


def test_committed_fixtures_are_what_the_script_writes():
    on_disk = {p.stem for p in MALFORMED.glob("*.json")}
    assert on_disk == set(BREAKAGES), "rerun tests/malformed/make_malformed.py"
    for breakage in BREAKAGES.values():
        text = (MALFORMED / f"{breakage.name}.json").read_text(encoding="utf-8")
        assert text == MAKE.fixture_text(breakage), f"{breakage.name}: rerun tests/malformed/make_malformed.py"


@pytest.mark.parametrize("name", sorted(BREAKAGES))
def test_validate_reports_one_line_naming_file_and_location(name, capsys):
    path = MALFORMED / f"{name}.json"
    status = cli.main(["validate", str(path)])
    out, err = capsys.readouterr()
    assert status == 2
    assert out.strip() == "0 valid, 1 invalid"
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{path}: {BREAKAGES[name].location}: Expected"), lines[0]
    assert "Received" in lines[0] and "Traceback" not in err


def test_validate_directory_checks_every_file_and_continues_past_bad_ones(tmp_path):
    for breakage in MAKE.BREAKAGES[:5]:
        (tmp_path / f"{breakage.name}.json").write_text(MAKE.fixture_text(breakage), encoding="utf-8")
    good = tmp_path / "zz_good.json"  # sorts after the bad ones: validation must get there
    good.write_text(MAKE.BASE.read_text(encoding="utf-8"), encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "bnconform", "validate", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stdout.strip() == "1 valid, 5 invalid"
    lines = result.stderr.splitlines()
    assert len(lines) == 5 and "Traceback" not in result.stderr
    assert sorted(line.split(": ")[0] for line in lines) == sorted(
        str(tmp_path / f"{b.name}.json") for b in MAKE.BREAKAGES[:5])


def test_validate_all_fixtures_in_one_process_without_traceback():
    result = subprocess.run([sys.executable, "-m", "bnconform", "validate", str(MALFORMED)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stdout.strip() == f"0 valid, {len(BREAKAGES)} invalid"
    assert len(result.stderr.splitlines()) == len(BREAKAGES) and "Traceback" not in result.stderr


def test_validate_missing_path_is_a_usage_error(tmp_path, capsys):
    assert cli.main(["validate", str(tmp_path / "nope.json")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Expected" in err and "nope.json" in err
