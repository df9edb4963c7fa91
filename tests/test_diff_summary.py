"""``bnconform diff``: one line per changed cell, then one summary line by transition; exit 0
when nothing changed, 1 when something did, 2 for bad input (issue 24). Every expected count
below is counted by hand from the documents written here."""

from __future__ import annotations

import json

from conftest import one_error_line
from report_documents import adapter, case_meta, document, verdict

from bnconform.interfaces import cli
from bnconform.reporting import results


def _doc(cells: dict) -> dict:
    """A results document with one cpu cell per case, ``cells``: case -> (status, detail)."""
    verdicts = [verdict(case, "fw.a", status, detail=detail) for case, (status, detail) in cells.items()]
    return document({"fw.a": adapter()}, {case: case_meta() for case in cells}, verdicts)


OLD = _doc({"momentum/a": ("pass", ""), "momentum/b": ("pass", ""), "momentum/c": ("pass", ""),
            "momentum/d": ("fail", "step 0: y[0]=1, but should be 2"), "momentum/e": ("error", "boom"),
            "momentum/f": ("pass", ""), "momentum/gone": ("pass", "")})
NEW = _doc({"momentum/a": ("fail", "x"), "momentum/b": ("fail", "x"), "momentum/c": ("fail", "x"),
            "momentum/d": ("pass", ""), "momentum/e": ("error", "bang"), "momentum/f": ("pass", ""),
            "momentum/new1": ("pass", ""), "momentum/new2": ("fail", "y")})


def test_summary_counts_transitions_biggest_first_then_added_and_removed():
    """a, b, c: pass -> fail (3); d: fail -> pass (1); e: error detail changed (1); f: unchanged;
    new1, new2: added (2); gone: removed (1). 3 + 1 + 1 + 2 + 1 = 8 changed cells."""
    assert len(results.diff(OLD, NEW)) == 8
    assert results.diff_summary(OLD, NEW) == ("8 cells changed: 3 pass -> fail, 1 error detail changed, "
                                              "1 fail -> pass; 2 added, 1 removed")


def test_summary_uses_thousands_separators_and_the_singular():
    many = {f"momentum/c{i:04}": ("pass", "") for i in range(1200)}
    failed = {case: ("fail", "x") for case in many}
    assert results.diff_summary(_doc(many), _doc(failed)) == "1,200 cells changed: 1,200 pass -> fail"
    assert results.diff_summary(_doc({"momentum/a": ("pass", "")}), _doc({})) == "1 cell changed: 1 removed"


def _cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_diff_command_ends_with_the_summary_and_exits_1(tmp_path, capsys):
    (tmp_path / "old.json").write_text(json.dumps(OLD))
    (tmp_path / "new.json").write_text(json.dumps(NEW))
    code, out, _ = _cli(capsys, "diff", tmp_path / "old.json", tmp_path / "new.json")
    lines = out.strip().splitlines()
    assert code == 1 and len(lines) == 9, out
    assert lines[0] == "momentum/a[fw.a-cpu]: pass -> fail: x"
    assert lines[-1] == "8 cells changed: 3 pass -> fail, 1 error detail changed, 1 fail -> pass; 2 added, 1 removed"


def test_diff_command_exits_0_when_nothing_changed_and_2_for_bad_input(tmp_path, capsys):
    (tmp_path / "old.json").write_text(json.dumps(OLD))
    code, out, _ = _cli(capsys, "diff", tmp_path / "old.json", tmp_path / "old.json")
    assert (code, out) == (0, "no cell changed its verdict\n")
    code, _, err = _cli(capsys, "diff", tmp_path / "old.json", tmp_path / "absent.json")
    one_error_line(code, err, "absent.json", "Expected")


def test_diff_help_states_the_exit_codes(capsys):
    try:
        cli.main(["diff", "--help"])
    except SystemExit as exc:
        assert exc.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "exit 0 when no cell changed, 1 when some changed, 2 for bad input" in text
    assert "summary line" in text
