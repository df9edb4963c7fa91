"""The main page's porting table: every number comes from the document's adapter metadata and
verdicts (change them and the table changes), it agrees with ``bnconform port`` on the same
document, and a backend without defaults, absent, or not runnable here is said to be so.

The metadata is written here (what the frameworks' documentation says, independently of the
adapters); the five names are the table's COMMON rows.
"""

from __future__ import annotations

import copy

from report_documents import case_meta, deviation, document, verdict

from bnconform.interfaces.port import report
from bnconform.judging.capabilities import Capabilities, describe
from bnconform.judging.selectors import where
from bnconform.reporting.pages import render
from bnconform.reporting.pages.porting import COMMON

PLAIN_EMA = {"epsilon_modes": {"add_inside_sqrt"}, "zero_debias": {False}, "num_updates_schedule": {False}}


@where("the layer takes its fused path")
def _fused(case):
    return True


def _meta(spelling, momentum, epsilon, variance, deviations=(), **extra) -> dict:
    caps = Capabilities(**{k: frozenset(v) for k, v in {**PLAIN_EMA, "running_variance": variance}.items()}, **extra)
    return {"framework": "fw", "version": "1", "devices": ["cpu"], "decay_parameter": list(spelling),
            "defaults": {"decay_parameter": momentum, "epsilon": epsilon}, "capabilities": describe(caps),
            "deviations": list(deviations), "unavailable": None}


RAISES = deviation("n1-raises", "edge", {"raises": "ValueError"})
METADATA = {
    "torch.nn": _meta(("momentum", "new"), 0.1, 1e-5, {"bessel"}, [RAISES]),
    "keras3.tensorflow": _meta(("momentum", "old"), 0.99, 1e-3, {"biased"}),
    "tf_keras.auto": _meta(("momentum", "old"), 0.99, 1e-3, {"biased"}, when=((_fused, {"running_variance": {"bessel"}}),)),
    "flax.linen": _meta(("momentum", "old"), 0.99, 1e-5, {"biased"}),
    "paddle.nn": _meta(("momentum", "old"), 0.9, 1e-5, {"biased"}),
}
METAS = {"degenerate/n1": case_meta(training_n=[1], update_n=[1], depends_on=[]), "formulas/plain": case_meta()}


def _document() -> dict:
    """The five backends pass both cases, except that torch.nn raises on one value per channel."""
    cells = [verdict(c, n) for n in METADATA for c in METAS]
    cells[0] = verdict("degenerate/n1", "torch.nn", "deviation", ["n1-raises"], ["edge"])
    return document(copy.deepcopy(METADATA), METAS, cells)


def _row(page: str, pair: str) -> list[str]:
    line = next(line for line in page.splitlines() if line.startswith(f"| {pair}"))
    return [c.strip() for c in line.strip("|").split(" | ")]


def test_one_row_per_pair_of_the_common_backends_near_the_top():
    page = render(_document())
    rows = [line for line in page.splitlines() if line.startswith("| ") and " → " in line.split(" | ")[0]][1:]  # [0]: header
    assert len(rows) == len(COMMON) * (len(COMMON) - 1) // 2
    assert page.index("## Porting between common backends") < page.index("heatmap.svg") < page.index("## Semantics")
    assert "- Every other pair, and the measured differences of these: `bnconform port FROM TO`" in page


def test_torch_to_keras3_row_reads_the_metadata():
    _, momentum, eps, variance, one = _row(render(_document()), "torch.nn → keras3.tensorflow")
    assert momentum == "`momentum`=0.1 → `momentum`=0.9 (new batch → old statistic); TO's default 0.99: pass 0.9"
    assert eps == "1e-05 → 0.001: pass 1e-05"
    assert variance == "Bessel → biased: TO × N/(N-1)"
    assert one == "torch.nn: raises ValueError · keras3.tensorflow: y = beta, var 0 (as model)"


def test_changed_metadata_changes_the_row():
    """Nothing is typed per framework: other defaults, another spelling, another variance kind."""
    doc = _document()
    doc["adapters"]["torch.nn"]["defaults"] = {"decay_parameter": 0.2, "epsilon": 1e-4}
    doc["adapters"]["keras3.tensorflow"]["decay_parameter"] = ["momentum", "new"]
    doc["adapters"]["keras3.tensorflow"]["capabilities"]["running_variance"] = "a Bessel-corrected running variance"
    _, momentum, eps, variance, _ = _row(render(doc), "torch.nn → keras3.tensorflow")
    assert momentum == "`momentum`=0.2 → `momentum`=0.2 (new batch → new batch); TO's default 0.99: pass 0.2"
    assert eps == "0.0001 → 0.001: pass 0.0001"
    assert variance == "both Bessel: no rescale"


def test_a_switching_backend_gets_one_rule_per_path_with_its_condition_as_a_footnote():
    page = render(_document())
    assert _row(page, "torch.nn → tf_keras.auto")[3] == ("path (a): both Bessel: no rescale; other inputs: Bessel → "
                                                          "biased: TO × N/(N-1)")
    assert _row(page, "keras3.tensorflow → tf_keras.auto")[3] == ("path (a): biased → Bessel: TO × (N-1)/N; other "
                                                                  "inputs: both biased: no rescale")
    assert "- (a) tf_keras.auto: the layer takes its fused path" in page


def test_the_table_and_bnconform_port_agree_on_the_same_document():
    doc = _document()
    doc["adapters"]["torch.nn"]["defaults"]["decay_parameter"] = 0.3
    port = "\n".join(report(doc, "torch.nn", "tf_keras.auto", "synthetic"))
    _, momentum, eps, variance, _ = _row(render(doc), "torch.nn → tf_keras.auto")
    assert "momentum=0.7" in port and "`momentum`=0.7" in momentum
    assert "pass epsilon=1e-05 explicitly" in port and eps.endswith("pass 1e-05")
    assert "every other input: torch.nn keeps a Bessel-corrected" in port and "N/(N-1)" in variance
    assert "inputs where the layer takes its fused path: both keep a Bessel-corrected" in port
    assert "path (a): both Bessel: no rescale" in variance


def test_without_recorded_defaults_the_row_says_so_and_states_no_number():
    """results.json written by pytest carries no ``defaults``: the rules stay, the numbers go."""
    doc = _document()
    for meta in doc["adapters"].values():
        del meta["defaults"]
    _, momentum, eps, variance, _ = _row(render(doc), "torch.nn → flax.linen")
    assert momentum == "TO's `momentum` = 1 − FROM's `momentum` (new batch → old statistic); FROM's default not recorded"
    assert eps == "defaults not recorded: pass the model's epsilon"
    assert variance == "Bessel → biased: TO × N/(N-1)"
    assert "0.1" not in momentum and "0.99" not in momentum


def test_absent_and_unavailable_backends_say_so():
    doc = _document()
    del doc["adapters"]["flax.linen"]
    doc["verdicts"] = [v for v in doc["verdicts"] if v["adapter"] != "flax.linen"]
    reason = "paddle is not installed; install it with: pip install 'bnconform[paddle]'"
    for v in doc["verdicts"]:
        if v["adapter"] == "paddle.nn":
            v.update(status="unavailable", detail=reason)
    doc["adapters"]["paddle.nn"].update(defaults={}, unavailable=reason)
    page = render(doc)
    assert _row(page, "torch.nn → flax.linen")[1:] == ["flax.linen: not in this document", "—", "—", "—"]
    label, momentum, _, _, one = _row(page, "torch.nn → paddle.nn")
    assert label == "torch.nn → paddle.nn (paddle.nn not runnable here: see above)"
    assert "TO's default not recorded: pass 0.9" in momentum
    assert one == "torch.nn: raises ValueError · paddle.nn: not run here"


def test_a_document_without_two_common_backends_gets_one_line_not_a_table():
    doc = _document()
    doc["adapters"] = {"torch.nn": doc["adapters"]["torch.nn"]}
    doc["verdicts"] = [v for v in doc["verdicts"] if v["adapter"] == "torch.nn"]
    page = render(doc)
    assert "- This document holds torch.nn of torch.nn, keras3.tensorflow" in page
    assert "| FROM → TO |" not in page and "`bnconform port FROM TO`" in page
