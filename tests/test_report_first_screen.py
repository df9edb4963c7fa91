"""The main page's first screen and its profile: every backend that could not run is listed with
its fix (however its cells split between unavailable and unsupported), and no profile cell is
cut mid-word (long deviation behaviours are codes explained under the table). Hand-written
results documents (tests/report_documents.py), no framework needed."""

from __future__ import annotations

import re

import pytest
from report_documents import adapter, case_meta, deviation, document, verdict

from bnconform.reporting.pages import render, render_details
from bnconform.reporting.pages.common import matrix_rows, not_runnable, why_and_fix
from bnconform.reporting.profile import ProfileCell, build_profile

CLANG = ("tinygrad's CPU device compiles every kernel with clang ('clang', from $CC) and it is not on PATH; "
         "install it (Debian: apt-get install clang)")
NODE = "node not found on PATH; install it with: npm ci --prefix backends/tfjs (after installing Node.js >= 18 and npm)"
PIP = "fw3 is not installed; install it with: pip install 'bnconform[fw3]'"
GPU = "device 'cuda' not present here (no NVIDIA GPU); this API needs GPU tensors: its forward() raises"
METAS = {"formulas/plain": case_meta(), "momentum/cumulative": case_meta(rule="cumulative", decay=None),
         "degenerate/n1": case_meta(training_n=[1], update_n=[1])}


def _environment_document():
    """fw.ok ran; fw.tool had its expressible cells blocked by a missing compiler (the rest settled
    unsupported from its declaration); fw.js and fw.pip never ran at all; fw.gpu ran on the CPU but
    has no GPU here."""
    cells = [verdict(c, "fw.ok") for c in METAS]
    cells += [verdict("formulas/plain", "fw.tool", "unavailable", detail=CLANG),
              verdict("degenerate/n1", "fw.tool", "unavailable", detail=CLANG),
              verdict("momentum/cumulative", "fw.tool", "unsupported", detail="fw.tool cannot express cumulative")]
    cells += [verdict(c, "fw.js", "unavailable", detail=NODE) for c in METAS]
    cells += [verdict(c, "fw.pip", "unavailable", detail=PIP) for c in METAS]
    cells += [verdict(c, "fw.gpu") for c in METAS] + [verdict(c, "fw.gpu", "unavailable", device="cuda", detail=GPU)
                                                      for c in METAS]
    adapters = {"fw.ok": adapter(), "fw.tool": adapter(unavailable=CLANG), "fw.js": adapter(),
                "fw.pip": adapter(unavailable=PIP), "fw.gpu": adapter()}
    return document(adapters, METAS, cells)


def test_every_backend_that_did_not_run_is_listed_with_its_reason():
    """fw.tool has unsupported cells beside the unavailable ones: still not runnable (its reason is
    environmental), where it used to count as 'expressible nowhere'; fw.gpu ran on the CPU."""
    absent = not_runnable(_environment_document())
    assert absent == {"fw.js": NODE, "fw.pip": PIP, "fw.tool": CLANG}


@pytest.mark.parametrize("reason, why, fix", [
    (CLANG, "tinygrad's CPU device compiles every kernel with clang ('clang', from $CC) and it is not on PATH",
     "install it (Debian: apt-get install clang)"),
    (NODE, "node not found on PATH", "`npm ci --prefix backends/tfjs` (after installing Node.js >= 18 and npm)"),
    (PIP, "fw3 is not installed", "`pip install 'bnconform[fw3]'`"),
    ("tl is not installed; install it with: an environment of its own: pip install 'tf==2.12.1' 'tl==2.2.5'",
     "tl is not installed", "an environment of its own: `pip install 'tf==2.12.1' 'tl==2.2.5'`"),
    ("node not found on PATH; install it with: npm ci --prefix b/tfjs (after installing Node.js), or bnconform setup",
     "node not found on PATH", "`npm ci --prefix b/tfjs` (after installing Node.js), or bnconform setup"),
    (GPU, "device 'cuda' not present here (no NVIDIA GPU)", ""),
    ("fw 1.1 fails on other 2.0: AttributeError", "fw 1.1 fails on other 2.0: AttributeError", ""),
])
def test_a_reason_splits_into_why_and_the_fix_it_names(reason, why, fix):
    assert why_and_fix(reason) == (why, fix)


def test_the_first_screen_lists_them_with_the_fix_before_anything_else():
    page = render(_environment_document())
    head = page[:page.index("## ")]  # everything before the first section
    assert "**Not runnable here (3)**" in head
    assert ("  - fw.tool: tinygrad's CPU device compiles every kernel with clang ('clang', from $CC) and it is not on "
            "PATH · fix: install it (Debian: apt-get install clang)") in head
    assert "  - fw.js: node not found on PATH · fix: `npm ci --prefix backends/tfjs` (after installing" in head
    assert "  - fw.pip: fw3 is not installed · fix: `pip install 'bnconform[fw3]'`" in head
    listed = head[head.index("**Not runnable here"):]
    assert "fw.gpu" not in listed and "fw.ok" not in listed


def test_a_backend_that_did_not_run_has_no_profile_and_one_unavailable_matrix_row():
    doc = _environment_document()
    assert sorted(build_profile(doc)) == ["fw.gpu", "fw.ok"]  # not 'not expressible' everywhere for fw.tool
    rows = matrix_rows(doc)
    assert "fw.tool (unavailable)" in rows and "fw.tool (cpu)" not in rows
    assert "fw.gpu (cpu)" in rows and "fw.gpu (cuda)" not in rows
    assert f"Unavailable: {CLANG}" in render_details(doc)


LONG = ("the running statistics become NaN instead of staying unchanged (and y, dx, dgamma of later steps "
        "normalized with them), because the layer folds the moments of an empty batch into them")


def _deviating_document():
    """Two backends share a long empty-batch behaviour (one code), a third has a precision one."""
    metas = {"degenerate/n0": case_meta(training_n=[0], update_n=[0]),
             "degenerate/cancel": case_meta(mean_to_spread=1e4)}
    poison = deviation("poison", "defect", {"outputs": ["y", "dx"]}, LONG)
    lossy = deviation("lossy", "precision", {"outputs": ["y"]}, "y, running_var carry the cancellation error of E[x^2] - E[x]^2")
    cells = [verdict("degenerate/n0", n, "deviation", ["poison"], ["defect"]) for n in ("fw.a", "fw.b")]
    cells += [verdict("degenerate/cancel", "fw.a"), verdict("degenerate/cancel", "fw.b"),
              verdict("degenerate/n0", "fw.c"), verdict("degenerate/cancel", "fw.c", "deviation", ["lossy"], ["precision"])]
    adapters = {"fw.a": adapter(deviations=[poison]), "fw.b": adapter(deviations=[poison]),
                "fw.c": adapter(deviations=[lossy])}
    return document(adapters, metas, cells)


def test_the_profile_value_keeps_the_whole_behaviour_and_its_kind():
    cell = build_profile(_deviating_document())["fw.a"]["empty_batch"]
    assert cell.value == f"defect: {LONG}" and cell.parts == [("defect", LONG)]
    assert ProfileCell("plain").pieces() == [("", "plain")]


def _profile_rows(page: str) -> list[list[str]]:
    """The cells of every row of the two profile tables."""
    section = page[page.index("## Semantics profile"):page.index("## Findings")]
    return [[c.strip() for c in line.strip("|").split(" | ")][1:] for line in section.splitlines()
            if line.startswith("| fw.")]


def test_no_profile_cell_is_cut_and_codes_are_explained_under_the_table():
    page = render(_deviating_document())
    cells = [c for row in _profile_rows(page) for c in row]
    assert cells and not any(c.endswith(("...", "…")) or "..." in c for c in cells)
    empty_batch = [row[6] for row in _profile_rows(page)[:3]]  # forward table: column 'empty batch'
    assert empty_batch == ["D1", "D1", "state unchanged"]
    assert f"- defect: **D1** {LONG}" in page
    assert "- precision: **P1** y, running_var carry the cancellation error of E[x^2] - E[x]^2" in page


def test_every_code_in_a_table_is_in_its_legend():
    page = render(_deviating_document())
    section = page[page.index("## Semantics profile"):page.index("## Findings")]
    second = section.index("**Gradients and cross-replica statistics**")
    for table in (section[:second], section[second:]):
        lines = table.splitlines()
        codes = {c for line in lines if line.startswith("| fw.") for c in re.findall(r"\b[DPTB]\d+\b", line)}
        legend = " ".join(line for line in lines if line.startswith("- "))
        assert all(f"**{code}**" in legend for code in codes)
    assert "D1" in section


def test_a_backend_without_declared_capabilities_is_named_not_given_the_oracles():
    """An executable that could not start declares nothing: the table names it instead of a row
    of every knob (the stand-in that lets its cells reach a host)."""
    written = _environment_document()
    written["adapters"]["fw.js"]["capabilities"] = {}
    page = render(written)
    table = page.split("## Capabilities (declared)")[1].split("\n## ")[0]
    assert not any(line.startswith("| fw.js |") for line in table.splitlines())
    assert "Not declared here: fw.js" in table


def test_an_executable_that_cannot_start_reports_no_capabilities(tmp_path):
    import json

    from bnconform.execution.plan import adapter_metadata

    (tmp_path / "bnconform-backend.json").write_text(json.dumps({
        "protocol": 1, "requires": {"executables": ["bnconform-no-such-runtime"]},
        "backends": [{"name": "demo.absent", "command": ["bnconform-no-such-runtime"]}]}))
    meta = adapter_metadata(f"exec:{tmp_path}")
    assert meta["capabilities"] == {} and "bnconform-no-such-runtime" in meta["notes"]
