"""The semantics profile is derived from verdicts and metadata: change them and the profile changes."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import in_framework_process

from bnconform.reporting.profile import ROWS, build_profile
from report_documents import adapter, case_meta, deviation, document, verdict

CASES = Path(__file__).resolve().parent.parent / "cases"


def _row(doc, backend, key):
    return build_profile(doc)[backend][key]


def test_rows_are_the_porters_facts():
    keys = [k for k, _ in ROWS]
    assert keys == ["momentum", "epsilon", "running_variance", "zero_debias", "cumulative", "batch_of_one",
                    "empty_batch", "half_moments", "float64", "variance_algorithm", "train_without_update",
                    "training_gradient", "inference_gradient", "replica_equal", "replica_unequal", "replica_empty"]


def test_replica_rows_read_the_split_and_name_a_state_finding():
    metas = {"replicas/e": case_meta(replica_splits=["equal"]), "replicas/u": case_meta(replica_splits=["unequal"]),
             "replicas/z": case_meta(replica_splits=["empty"]), "formulas/a": case_meta()}
    cells = [verdict("replicas/e", "t"), verdict("replicas/u", "t", "unsupported"),
             verdict("replicas/z", "t", "deviation", ["empty-updates"], ["defect"]), verdict("formulas/a", "t")]
    devs = [deviation("empty-updates", "defect", {"outputs": ["running_mean", "running_var"]}, "stats move")]
    doc = document({"t": adapter(deviations=devs)}, metas, cells)
    assert _row(doc, "t", "replica_equal").value == "moments of the union"
    assert _row(doc, "t", "replica_unequal").status == "not measured"
    assert _row(doc, "t", "replica_empty").value == "running stats corrupted (defect)"


def test_gradient_rows_come_from_the_gradient_cases_and_keep_out_of_forward_rows():
    """A backward deviation on a float16 gradient case shows in the training-gradient row, not in
    the half-precision forward row; an N = 1 gradient case belongs to the batch-of-one row."""
    metas = {"gradients/a": case_meta(gradients=["batch"]),
             "gradients/h": case_meta(gradients=["batch"], input_dtype="float16"),
             "gradients/one": case_meta(gradients=["batch"], training_n=[1]),
             "gradients/e": case_meta(gradients=["running"], step_kinds=["running+no-update"]),
             "formulas/h": case_meta(input_dtype="float16")}
    cells = [verdict("gradients/a", "t"), verdict("gradients/h", "t", "deviation", ["slow-dx"], ["precision"]),
             verdict("gradients/one", "t", "deviation", ["raises"], ["edge"]), verdict("gradients/e", "t"),
             verdict("formulas/h", "t")]
    devs = [deviation("slow-dx", "precision", {"outputs": ["dx"]}, "dx rounded in float16"),
            deviation("raises", "edge", {"raises": "ValueError"})]
    doc = document({"t": adapter(deviations=devs)}, metas, cells)
    training = _row(doc, "t", "training_gradient")
    assert "dx rounded in float16" in training.value and training.evidence == ["gradients/h"]
    assert _row(doc, "t", "half_moments").value == "yes"
    assert _row(doc, "t", "inference_gradient").value.startswith("running stats")
    assert "gradients/one" not in training.evidence


def test_momentum_reads_spelling_and_default_and_counts_passing_cases():
    metas = {"momentum/a": case_meta(), "momentum/b": case_meta(decay=0.5), "formulas/c": case_meta()}
    cells = [verdict(c, "t") for c in metas]
    doc = document({"t": adapter(decay_parameter=("momentum", "new"))}, metas, cells)
    cell = _row(doc, "t", "momentum")
    assert cell.status == "measured" and cell.evidence == ["momentum/a", "momentum/b"]
    assert "`momentum` 0.1 (decay 0.9)" in cell.value and "weight on new" in cell.value and "2 EMA cases pass" in cell.value
    keras = document({"t": adapter(decay_parameter=("momentum", "old"), defaults={"decay_parameter": 0.99})}, metas, cells)
    assert "0.99 (decay 0.99), weight on old" in _row(keras, "t", "momentum").value
    cells[0]["status"], cells[0]["detail"] = "fail", "step 0: running_mean[0]=1, but should be 2"
    assert _row(doc, "t", "momentum").evidence == ["momentum/b"]


def test_epsilon_default_and_placement_from_the_modes_that_ran():
    metas = {f"epsilon/{m}": case_meta(epsilon_mode=m, depends_on=["epsilon_modes"])
             for m in ("add_inside_sqrt", "add_outside_sqrt", "max_inside_sqrt")}
    cells = [verdict("epsilon/add_inside_sqrt", "t"), verdict("epsilon/add_outside_sqrt", "t", "unsupported"),
             verdict("epsilon/max_inside_sqrt", "t", "unsupported")]
    doc = document({"t": adapter(defaults={"epsilon": 1e-3})}, metas, cells)
    assert _row(doc, "t", "epsilon").value == "0.001, inside sqrt"
    for v in cells:
        v["status"] = "pass"
    assert _row(doc, "t", "epsilon").value == "0.001, any placement"


@pytest.mark.parametrize("ran, capability, expected", [
    (("bessel",), "a Bessel-corrected running variance", "Bessel"),
    (("biased",), "a biased running variance", "biased"),
    (("bessel", "biased"), "a biased running variance; a Bessel-corrected running variance when fused", "switches with path"),
    (("bessel", "biased"), "a Bessel-corrected running variance, a biased running variance", "either (a parameter)"),
])
def test_running_variance_kind_from_dependent_cases_that_ran(ran, capability, expected):
    metas = {f"momentum/{k}": case_meta(variance=k) for k in ("bessel", "biased")}
    cells = [verdict(c, "t", "pass" if m["variance"] in ran else "unsupported") for c, m in metas.items()]
    doc = document({"t": adapter(capabilities={"running_variance": capability})}, metas, cells)
    assert _row(doc, "t", "running_variance").value == expected


def test_zero_debias_always_optional_never():
    metas = {f"momentum/zd_{z}": case_meta(zero_debias=z, depends_on=["zero_debias"]) for z in (True, False)}
    for ran, expected in (((True,), "always"), ((False,), "never"), ((True, False), "optional")):
        cells = [verdict(c, "t", "pass" if m["zero_debias"] in ran else "unsupported") for c, m in metas.items()]
        assert _row(document({"t": adapter()}, metas, cells), "t", "zero_debias").value == expected


def test_expressibility_rows_are_not_measured_when_nothing_ran():
    metas = {"momentum/cum": case_meta(rule="cumulative", decay=None), "momentum/tw": case_meta(step_kinds=["batch+no-update"])}
    doc = document({"t": adapter()}, metas, [verdict("momentum/cum", "t", "unsupported"), verdict("momentum/tw", "t")])
    cumulative, without_update = _row(doc, "t", "cumulative"), _row(doc, "t", "train_without_update")
    assert (cumulative.value, cumulative.status, cumulative.evidence) == ("no", "not measured", ["momentum/cum"])
    assert (without_update.value, without_update.status) == ("yes (1 cases ran)", "measured")


def _degenerate_doc(status, deviations=(), declared=()):
    metas = {"degenerate/n1": case_meta(training_n=[1], update_n=[1]), "degenerate/n0": case_meta(training_n=[0], update_n=[0])}
    kinds = [d["kind"] for d in declared]
    cells = [verdict(c, "t", status, deviations, kinds) for c in metas]
    return document({"t": adapter(deviations=declared)}, metas, cells)


def test_batch_of_one_and_empty_batch_follow_the_verdicts():
    assert _row(_degenerate_doc("pass"), "t", "batch_of_one").value == "y = beta, var 0 (as model)"
    raises = deviation("n1-raises", "edge", {"raises": "ValueError"})
    assert _row(_degenerate_doc("deviation", ["n1-raises"], [raises]), "t", "batch_of_one").value == "raises ValueError"
    counter = deviation("counted", "defect", {"outputs": ["num_updates"]})
    assert _row(_degenerate_doc("deviation", ["counted"], [counter]), "t", "empty_batch").value == "counter skew (state unchanged)"
    poison = deviation("nan", "defect", {"outputs": ["running_mean", "running_var"]})
    assert _row(_degenerate_doc("deviation", ["nan"], [poison]), "t", "empty_batch").value == "running stats corrupted (defect)"
    assert _row(_degenerate_doc("pass"), "t", "empty_batch").value == "state unchanged"


def test_precision_rows_use_the_deviation_kind():
    metas = {"formulas/half": case_meta(input_dtype="float16"), "formulas/f64": case_meta(input_dtype="float64", param_dtype="float64"),
             "degenerate/cancel": case_meta(mean_to_spread=1e4), "formulas/plain": case_meta(mean_to_spread=10.0)}
    wide = deviation("f64-as-f32", "dtype", {"variant": "float64 computed in float32"}, "float64 computed in float32")
    lossy = deviation("one-pass", "precision", {"outputs": ["y", "running_var"]}, "one-pass variance")
    cells = [verdict("formulas/half", "t"), verdict("formulas/f64", "t", "deviation", ["f64-as-f32"], ["dtype"]),
             verdict("degenerate/cancel", "t", "deviation", ["one-pass"], ["precision"]), verdict("formulas/plain", "t")]
    doc = document({"t": adapter(deviations=[wide, lossy])}, metas, cells)
    assert _row(doc, "t", "half_moments").value == "yes"
    assert _row(doc, "t", "float64").value == "dtype: float64 computed in float32"
    assert _row(doc, "t", "variance_algorithm").value == "precision: one-pass variance"
    assert _row(doc, "t", "variance_algorithm").evidence == ["degenerate/cancel"]
    wide["kind"] = "edge"  # a declaration of another kind is not a dtype finding
    assert _row(doc, "t", "float64").value == "yes"


def test_unavailable_backends_have_no_profile():
    metas = {"formulas/a": case_meta()}
    doc = document({"t": adapter(), "gone": adapter(unavailable="cannot import gone")}, metas,
                   [verdict("formulas/a", "t"), verdict("formulas/a", "gone", "unavailable")])
    assert list(build_profile(doc)) == ["t"]


@in_framework_process("torch")  # imports torch: in the torch test process
def test_deleting_a_real_declaration_turns_the_profile_cell_into_a_failure():
    """torch.nn counts an empty batch in num_batches_tracked (declared). Judge the real case with and
    without that declaration: the profile goes from the counter skew to an unexpected failure."""
    pytest.importorskip("torch")
    from bnconform.reporting import results
    from bnconform.adapters.torch.nn import TorchModuleAdapter
    from bnconform.judging.judge import judge
    from bnconform.caseformat.validation import load_case

    class Undeclared(TorchModuleAdapter):
        deviations = tuple(d for d in TorchModuleAdapter.deviations if d.name != "empty-batch-counted")

    case = load_case(CASES / "degenerate" / "n0_rank2_train.json")
    for adapter_, expected in ((TorchModuleAdapter(), "counter skew (state unchanged)"), (Undeclared(), "UNEXPECTED 1 fail")):
        doc = results.build([judge(adapter_, case, "cpu")], {}, {}, CASES)
        cell = build_profile(doc)["torch.nn"]["empty_batch"]
        assert (cell.value, cell.evidence) == (expected, ["degenerate/n0_rank2_train"])


def test_case_meta_is_read_from_the_case_files():
    from bnconform.reporting.results import case_metadata
    from bnconform.caseformat.validation import load_case

    empty = case_metadata(load_case(CASES / "degenerate" / "n0_rank2_train.json"))
    assert 0 in empty["training_n"] and 0 in empty["update_n"]
    cancel = case_metadata(load_case(CASES / "degenerate" / "cancellation_float32_1e4.json"))
    assert cancel["mean_to_spread"] >= 1e3 and cancel["input_dtype"] == "float32"
    bessel = case_metadata(load_case(CASES / "momentum" / "decay_0.9_bessel_3steps.json"))
    assert "running_variance" in bessel["depends_on"] and bessel["rule"] == "ema"
