"""The pages a person reads: findings ranked by harm, separate counts, the line budget, the heatmap."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from report_documents import FAMILIES, adapter, case_meta, deviation, document, verdict

from bnconform.reporting import results
from bnconform.reporting.pages import MAX_LINES, render, render_details, write_pages
from bnconform.reporting.pages.findings import findings, summary_line
from bnconform.reporting.pages.heatmap import render_heatmap

KINDS = ("edge", "dtype", "precision", "defect")  # deliberately not in harm order


def _ranked_document():
    """One backend with one deviation per kind; the edge one covers most cells, the defect fewest."""
    metas = {f"degenerate/c{i}": case_meta() for i in range(10)}
    declared = [deviation(f"{k}-dev", k, {"outputs": ["y"]}) for k in KINDS]
    cells, i = [], 0
    for count, kind in zip((4, 3, 2, 1), KINDS):
        for _ in range(count):
            cells.append(verdict(f"degenerate/c{i}", "fw.a", "deviation", [f"{kind}-dev"], [kind]))
            i += 1
    return document({"fw.a": adapter(deviations=declared)}, metas, cells)


def test_findings_rank_defects_first_whatever_the_cell_counts():
    found = findings(_ranked_document())
    assert [f.kind for f in found] == ["defect", "precision", "dtype", "edge"]
    assert [len(f.cells) for f in found] == [1, 2, 3, 4]
    assert found[0].repro() == "bnconform check cases/degenerate/c9.json --backend fw.a"


def test_a_shared_declaration_is_one_finding_naming_both_backends():
    shared = deviation("raises-on-one", "edge", {"raises": "ValueError"})
    metas = {"degenerate/n1": case_meta(training_n=[1])}
    doc = document({"fw.a": adapter(deviations=[shared]), "fw.b": adapter(deviations=[shared])}, metas,
                   [verdict("degenerate/n1", b, "deviation", ["raises-on-one"], ["edge"]) for b in ("fw.b", "fw.a")])
    (found,) = findings(doc)
    assert found.backends == ["fw.a", "fw.b"] and len(found.cells) == 2 and found.worst == "raises ValueError"


def test_worst_error_comes_from_the_cells_mismatches():
    doc = _ranked_document()
    doc["verdicts"][-1]["mismatches"] = [{"output": "running_var", "max_abs_error": 3.5, "max_rel_error": 0.25},
                                         {"output": "y", "max_abs_error": "inf", "max_rel_error": "inf"}]
    assert findings(doc)[0].worst.startswith("y abs inf")


def test_summary_counts_framework_defects_apart_from_unexpected_failures():
    doc = _ranked_document()
    doc["verdicts"].append(verdict("degenerate/c0", "fw.b", "fail", detail="step 0: y[0]=1, but should be 2"))
    doc["adapters"]["fw.b"] = adapter()
    line = summary_line(doc)
    assert "1 framework defects (1 cells)" in line and "1 precision (2 cells)" in line and "1 edge (4 cells)" in line
    assert "1 unexpected failures (1 fail, 0 error)" in line
    page = render(doc)
    assert page.index("### Unexpected failures (1)") < page.index("**fail** fw.b") < page.index("**defect** fw.a")


def test_header_names_every_framework_version():
    doc = _ranked_document()
    doc["adapters"]["fw.b"] = adapter(framework="otherfw", version="9.8.7", unavailable="cannot import otherfw")
    doc["verdicts"].append(verdict("degenerate/c0", "fw.b", "unavailable", detail="cannot import otherfw"))
    page = render(doc)
    assert "fw 1.0 (fw.a)" in page and "otherfw 9.8.7 (fw.b)" in page
    assert "**Not runnable here (1)**" in page and "  - fw.b: cannot import otherfw · no install fix named" in page


def _big_document(backends=24, per_backend=8):
    """24 backends, each with 8 distinct observed deviations of every kind, over every family."""
    metas = {f"{fam}/case{i}": case_meta() for fam in FAMILIES for i in range(10)}
    adapters, cells = {}, []
    for b in range(backends):
        name = f"framework{b:02d}.api"
        declared = [deviation(f"{name}-dev{k}", KINDS[k % 4], {"outputs": ["y"]}) for k in range(per_backend)]
        adapters[name] = adapter(framework=f"framework{b:02d}", deviations=declared)
        for j, case in enumerate(metas):
            dev = declared[j % per_backend] if j % 3 == 0 else None
            cells.append(verdict(case, name, "deviation" if dev else "pass", [dev["name"]] if dev else [],
                                 [dev["kind"]] if dev else []))
    return document(adapters, metas, cells)


def test_main_page_fits_the_line_budget_with_24_backends_and_keeps_defects():
    doc = _big_document()
    page = render(doc)
    lines = page.splitlines()
    assert len(lines) <= MAX_LINES
    assert sum(line.startswith("| framework") for line in lines) == 24 * 4  # profile (two tables), matrix, capabilities
    shown = [line for line in lines if line.startswith("- **")]
    assert shown and all("**defect**" in line for line in shown[:24])
    assert "more in [conformance-details.md]" in page
    details = render_details(doc)
    assert sum(line.startswith("- **") and "· worst:" in line for line in details.splitlines()) == len(findings(doc))
    assert "applies to cells selected for framework00.api-dev0" in details and "why framework00.api-dev0 happens" in details


def test_heatmap_is_xml_with_one_cell_rect_per_backend_and_family():
    doc = _big_document(backends=5, per_backend=4)
    root = ET.fromstring(render_heatmap(doc))
    cells = [r for r in root.iter("{http://www.w3.org/2000/svg}rect") if r.get("class") == "cell"]
    assert len(cells) == 5 * len(FAMILIES)
    tips = [c.find("{http://www.w3.org/2000/svg}title").text for c in cells]
    assert "framework00.api (cpu) · degenerate: 6 pass, 1 defect, 1 precision, 1 dtype, 1 edge" in tips


def test_pages_are_written_and_the_heatmap_is_embedded(tmp_path):
    write_pages(_ranked_document(), tmp_path)
    assert "![verdicts per backend and family](heatmap.svg)" in (tmp_path / "conformance.md").read_text()
    assert (tmp_path / "heatmap.svg").read_text().startswith("<svg")
    assert "## fw.a" in (tmp_path / "conformance-details.md").read_text()


def test_format_1_results_are_rejected_in_one_line(tmp_path):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"format": 1, "runs": [], "adapters": {}, "verdicts": []}))
    with pytest.raises(results.ResultsError) as caught:
        results.read(old)
    message = str(caught.value)
    assert "\n" not in message and "Expected: format 2" in message and "Received: format 1" in message
