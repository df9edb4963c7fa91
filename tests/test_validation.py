"""Every case file is valid; every malformed one fails with one clear line naming where.

The malformed fixtures in tests/malformed/ are written by tests/malformed/make_malformed.py,
each from a real case broken in one way; BREAKAGES there names the location each error must give.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import jsonschema
import pytest

from bnconform.interfaces import cli
from bnconform.caseformat.validation import CaseError, check_meaning, load_case

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


def test_validate_directory_checks_every_file_and_continues_past_bad_ones(tmp_path, capsys):
    for breakage in MAKE.BREAKAGES[:5]:
        (tmp_path / f"{breakage.name}.json").write_text(MAKE.fixture_text(breakage), encoding="utf-8")
    good = tmp_path / "zz_good.json"  # sorts after the bad ones: validation must get there
    good.write_text(MAKE.BASE.read_text(encoding="utf-8"), encoding="utf-8")
    status = cli.main(["validate", str(tmp_path)])  # an exception would fail the test, not print
    out, err = capsys.readouterr()
    assert status == 2
    assert out.strip() == "1 valid, 5 invalid"
    lines = err.splitlines()
    assert len(lines) == 5 and "Traceback" not in err
    assert sorted(line.split(": ")[0] for line in lines) == sorted(
        str(tmp_path / f"{b.name}.json") for b in MAKE.BREAKAGES[:5])


def test_validate_all_fixtures_in_one_process_without_traceback(capsys):
    status = cli.main(["validate", str(MALFORMED)])
    out, err = capsys.readouterr()
    assert status == 2
    assert out.strip() == f"0 valid, {len(BREAKAGES)} invalid"
    assert len(err.splitlines()) == len(BREAKAGES) and "Traceback" not in err


def test_validate_missing_path_is_a_usage_error(tmp_path, capsys):
    assert cli.main(["validate", str(tmp_path / "nope.json")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Expected" in err and "nope.json" in err


# --- The fast path: a compiled yes/no schema check, the full walk only to explain ----------------

from bnconform.caseformat import validation  # noqa: E402
from bnconform.caseformat.schema_check import UnsupportedKeyword, compile_schema  # noqa: E402


@pytest.fixture(scope="module")
def fast_check():
    return compile_schema(json.loads((CASES / "schema.json").read_text(encoding="utf-8")))


def test_compiled_check_accepts_every_case_file(fast_check):
    rejected = [p.name for p in CASE_FILES if not fast_check(json.loads(p.read_text(encoding="utf-8")))]
    assert not rejected, f"Expected: the compiled check accepts every valid case. Received: rejects {rejected}"


def _mutations(obj, rng):
    """(where, mutated copy) pairs: each changes one leaf or key in a way a schema may forbid."""
    leaves = []

    def walk(node, path):
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else None
        if items is None:
            leaves.append(path)
            return
        for key, value in items:
            walk(value, (*path, key))
    walk(obj, ())
    replacements = [None, True, 1, 1.5, -1, 7, "x", "0x1p+0", "nan", [], {}, "float8", 2.0]
    for index in rng.choice(len(leaves), size=min(40, len(leaves)), replace=False):
        path = leaves[index]
        copy = json.loads(json.dumps(obj))
        parent = copy
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = replacements[rng.integers(len(replacements))]
        yield "/".join(map(str, path)), copy
    for key in ("config", "initial_state", "steps"):
        copy = json.loads(json.dumps(obj))
        if key == "steps":
            copy[key].append({})
        else:
            copy[key]["unexpected"] = 1
        yield f"{key}: one entry too many", copy
        del copy[key]
        yield f"{key}: missing", copy


def test_compiled_check_never_accepts_what_jsonschema_rejects(fast_check, schema_validator):
    import numpy as np

    rng = np.random.default_rng(20240611)
    rejected = 0
    for path in CASE_FILES[::30]:
        for where, mutated in _mutations(json.loads(path.read_text(encoding="utf-8")), rng):
            full = schema_validator.is_valid(mutated)
            assert full or not fast_check(mutated), f"{path.name} {where}: accepted, but jsonschema rejects it"
            rejected += not full
    assert rejected > 100  # the mutations really do break the schema


def test_compiled_check_agrees_on_every_malformed_fixture(fast_check, schema_validator):
    for path in sorted(MALFORMED.glob("*.json")):
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            continue
        assert not fast_check(obj) or schema_validator.is_valid(obj), path.name


def test_compiling_a_schema_with_an_unknown_keyword_refuses():
    with pytest.raises(UnsupportedKeyword):
        compile_schema({"type": "string", "format": "date"})


def test_a_valid_file_loads_without_the_full_schema_walk(tmp_path, monkeypatch):
    copy = tmp_path / "case.json"
    copy.write_text(CASE_FILES[0].read_text(encoding="utf-8"), encoding="utf-8")

    def walk_forbidden():
        raise AssertionError("the full jsonschema walk ran on a valid file")
    monkeypatch.setattr(validation, "_validator", walk_forbidden)
    assert load_case(copy).id == json.loads(copy.read_text(encoding="utf-8"))["id"]


def test_loaded_cases_are_cached_until_the_file_changes(tmp_path, monkeypatch):
    import bnconform.caseformat.validation as validation

    parsed = []
    real = validation._load_uncached
    monkeypatch.setattr(validation, "_load_uncached", lambda p: parsed.append(p) or real(p))
    path = tmp_path / "case.json"
    text = CASE_FILES[0].read_text(encoding="utf-8")
    path.write_text(text, encoding="utf-8")
    first = load_case(path)
    again = load_case(path)
    assert len(parsed) == 1 and again is not first  # parsed once, but every caller gets its own copy
    again.steps[0].x[...] = 0  # a caller that edits its case ...
    assert load_case(path).steps[0].x.tobytes() == first.steps[0].x.tobytes()  # ... changes no one else's
    assert load_case(tmp_path / "." / "case.json").path == str(tmp_path / "." / "case.json")  # as named

    path.write_text(text.replace('"description": "', '"description": "Edited. ', 1), encoding="utf-8")
    edited = load_case(path)  # the size changed: parsed again
    assert len(parsed) == 2 and edited.description.startswith("Edited. ")

    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    load_case(path)
    assert len(parsed) == 3  # same size, new mtime: parsed again

    path.write_text('{"broken": ', encoding="utf-8")
    with pytest.raises(CaseError):
        load_case(path)  # a file that became invalid is never served from the cache
