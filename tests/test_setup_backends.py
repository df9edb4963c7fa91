"""``bnconform setup`` and what could not run: a manifest's setup command runs where it is needed
and possible, a failure is one line, and a backend missing a program (tinygrad without clang) is
*unavailable* with the fix before any capability check can call its cells inexpressible."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bnconform.adapters.exec_manifest import ManifestError, missing, read_manifest
from bnconform.interfaces.setup_backends import set_up

CASE = Path(__file__).resolve().parents[1] / "cases" / "degenerate" / "c1_rank2.json"


def _folder(tmp_path, setup, **extra):
    """A backend folder that needs ``installed.txt`` and declares ``setup``."""
    manifest = {"protocol": 1, "framework": "demo", "requires": {"files": ["installed.txt"]},
                "install": "run the setup", "backends": [{"name": "demo.row", "command": ["true"]}], **extra}
    if setup is not None:
        manifest["setup"] = setup
    (tmp_path / "bnconform-backend.json").write_text(json.dumps(manifest))
    return read_manifest(str(tmp_path))[0]


def test_setup_runs_when_something_is_missing_then_has_nothing_to_do(tmp_path):
    row = _folder(tmp_path, [sys.executable, "-c", "open('installed.txt', 'w').close()"])
    assert missing(row) is not None
    assert set_up(row, timeout=60) == f"{tmp_path.name}: set up"
    assert missing(row) is None and set_up(row, timeout=60) is None


def test_a_failing_setup_is_one_line_with_its_last_output(tmp_path):
    row = _folder(tmp_path, [sys.executable, "-c", "import sys; print('registry unreachable'); sys.exit(3)"])
    assert set_up(row, timeout=60) == f"{tmp_path.name}: setup failed (exit 3): registry unreachable"


def test_a_setup_whose_program_is_absent_says_so(tmp_path):
    row = _folder(tmp_path, ["bnconform-no-such-program", "install"])
    assert set_up(row, timeout=60) == f"{tmp_path.name}: not set up: bnconform-no-such-program is not on PATH"


def test_setup_may_name_its_folder(tmp_path):
    assert _folder(tmp_path, ["npm", "ci", "--prefix", "{folder}"]).setup == ("npm", "ci", "--prefix", str(tmp_path.resolve()))


@pytest.mark.parametrize("bad", [[], "npm ci", [1]])
def test_a_malformed_setup_is_refused_naming_the_field(tmp_path, bad):
    with pytest.raises(ManifestError, match="/setup: Expected: a command"):
        _folder(tmp_path, bad)


def test_a_missing_compiler_makes_tinygrad_unavailable_with_the_fix(monkeypatch):
    from bnconform.adapters.tinygrad.nn import TinygradBatchNormAdapter

    monkeypatch.setenv("CC", "bnconform-no-such-clang")
    reason = TinygradBatchNormAdapter.missing_tool()
    assert "'bnconform-no-such-clang'" in reason and "apt-get install clang" in reason


def test_the_planner_asks_for_tools_before_capabilities(monkeypatch):
    """A cell the adapter could not express and cannot run anyway reads unavailable, with the tool."""
    from faulty_adapters import RaisingAdapter  # a registered-like adapter class with no requirements

    from bnconform.caseformat.validation import load_case
    from bnconform.execution import plan
    from bnconform.judging.capabilities import Capabilities

    class NeedsCompiler(RaisingAdapter):
        name = "test.needs_compiler"
        capabilities = Capabilities(dtypes=frozenset())  # expresses nothing

        @classmethod
        def missing_tool(cls):
            return "cc-9000 is not on PATH; install it with: apt-get install cc-9000"

    monkeypatch.setattr(plan, "adapter_class", lambda name: NeedsCompiler)
    plan.missing_requirement.cache_clear()
    try:
        case = load_case(CASE)
        verdict = plan.presettle(plan.Cell(str(CASE), case.id, case.family, NeedsCompiler.name,
                                           "cpu"), case)
    finally:
        plan.missing_requirement.cache_clear()
    assert (verdict.status, verdict.detail) == ("unavailable", "cc-9000 is not on PATH; install it with: apt-get install cc-9000")
