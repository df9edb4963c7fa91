"""`bnconform port FROM TO`: the translation lines and the disagreeing cells, from synthetic results
documents (hand-written adapter metadata and verdicts, no framework needed), plus one real run of
the two torch backends.

The metadata below states what the frameworks' documentation says, typed here independently of
the adapters: torch momentum=0.1 weighs the new batch, eps=1e-5, Bessel running variance; Keras
(tf_keras and Keras 3) momentum=0.99 weighs the old statistic, epsilon=1e-3, biased running
variance (tf_keras' fused kernel: Bessel); flax momentum=0.99 (old), epsilon=1e-5, biased.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import requires

from bnconform.execution.selection import select_backends
from bnconform.interfaces.cli import main
from bnconform.interfaces.port import report
from bnconform.judging.capabilities import Capabilities, describe
from bnconform.judging.selectors import where
from bnconform.reporting import results

ROOT = Path(__file__).resolve().parents[1]
PLAIN_EMA = {"epsilon_modes": {"add_inside_sqrt"}, "zero_debias": {False}, "num_updates_schedule": {False}}


@where("the layer takes its fused path")
def _fused(case):
    return True


def _meta(spelling, momentum, epsilon, variance, **extra):
    caps = Capabilities(**{k: frozenset(v) for k, v in {**PLAIN_EMA, "running_variance": variance}.items()}, **extra)
    return {"decay_parameter": list(spelling), "defaults": {"decay_parameter": momentum, "epsilon": epsilon},
            "capabilities": describe(caps)}


TORCH = _meta(("momentum", "new"), 0.1, 1e-5, {"bessel"})
KERAS = _meta(("momentum", "old"), 0.99, 1e-3, {"biased"})
TF_KERAS_AUTO = _meta(("momentum", "old"), 0.99, 1e-3, {"biased"}, when=((_fused, {"running_variance": {"bessel"}}),))
FLAX = _meta(("momentum", "old"), 0.99, 1e-5, {"biased"})
METADATA = {"torch.nn": TORCH, "keras3.tensorflow": KERAS, "keras3.jax": KERAS, "keras3.torch": KERAS,
            "tf_keras.auto": TF_KERAS_AUTO, "flax.linen": FLAX}


def _verdict(case, adapter, status, detail="", deviations=(), kinds=(), mismatches=()):
    return {"case": case, "family": case.split("/")[0], "adapter": adapter, "device": "cpu", "status": status,
            "detail": detail, "deviations": list(deviations), "kinds": list(kinds), "mismatches": list(mismatches),
            "compared": [], "seconds": 0.0, "version": "1"}


RAISES_N1 = {"detail": "raises ValueError ('Expected more than 1 value per channel when training')",
             "deviations": ["single-value-per-channel-raises"], "kinds": ["edge"]}
FAIL_Y = {"detail": "step 0: y[0,1]=0.49 ...", "mismatches": [
    {"step": 0, "output": "y", "index": [0, 1], "expected": 0.5, "got": 0.49, "max_abs_error": 0.01,
     "max_rel_error": 0.02, "ulps": 9e13, "reason": "outside tolerance"},
    {"step": 1, "output": "running_var", "index": [1], "expected": 2.0, "got": 2.5, "max_abs_error": 0.5,
     "max_rel_error": 0.25, "ulps": 1e15, "reason": "outside tolerance"}]}


def _document(a, b):
    """Both backends pass one case; on three others they disagree (two of them alike); one cell is
    unavailable on b."""
    verdicts = [_verdict("formulas/rank2_nc_train", a, "pass"), _verdict("formulas/rank2_nc_train", b, "pass"),
                _verdict("degenerate/n1_rank2_train", a, "deviation", **RAISES_N1),
                _verdict("degenerate/n1_rank2_train", b, "pass"),
                _verdict("degenerate/n1_rank4_1x1_train", a, "deviation", **RAISES_N1),
                _verdict("degenerate/n1_rank4_1x1_train", b, "pass"),
                _verdict("momentum/decay_0.9_biased_3steps", a, "unsupported", detail=f"{a} always uses X"),
                _verdict("momentum/decay_0.9_biased_3steps", b, "fail", **FAIL_Y),
                _verdict("formulas/float16_nc_train", a, "pass"),
                _verdict("formulas/float16_nc_train", b, "unavailable", detail="not here")]
    return {"format": results.RESULTS_FORMAT, "runs": [], "cases": {}, "verdicts": verdicts,
            "adapters": {a: METADATA[a], b: METADATA[b]}}


def _lines(a, b):
    return report(_document(a, b), a, b, "synthetic")


def _line(lines, start):
    found = [line.strip() for line in lines if line.strip().startswith(start)]
    assert found, f"no line starting {start!r} in:\n" + "\n".join(lines)
    return found


@pytest.mark.parametrize("target", ["tf_keras.auto", "keras3.tensorflow", "keras3.jax", "keras3.torch", "flax.linen"])
def test_torch_to_old_weight_apis_momentum_and_rescale(target):
    lines = _lines("torch.nn", target)
    assert (f"momentum: torch.nn momentum=0.1 (weight on the new batch) -> {target} momentum=0.9 "
            f"(weight on the old statistic); {target}'s default is momentum=0.99: pass momentum=0.9 explicitly"
            in _line(lines, "momentum: torch.nn momentum=0.1"))
    start = "every other input: torch.nn" if target == "tf_keras.auto" else "running variance: torch.nn"
    rescale = _line(lines, f"{start} keeps a Bessel-corrected")[0]
    assert "multiply its moving variance by N/(N-1)" in rescale
    assert any("values per channel" in line for line in lines)


@pytest.mark.parametrize("source", ["tf_keras.auto", "keras3.tensorflow", "keras3.jax", "keras3.torch", "flax.linen"])
def test_old_weight_apis_to_torch_momentum_and_rescale(source):
    lines = _lines(source, "torch.nn")
    assert any("momentum=0.99 (weight on the old statistic) -> torch.nn momentum=0.01 (weight on the new batch); "
               "torch.nn's default is momentum=0.1: pass momentum=0.01 explicitly" in line for line in lines)
    start = "every other input:" if source == "tf_keras.auto" else "running variance:"
    assert "multiply its moving variance by (N-1)/N" in _line(lines, f"{start} {source} keeps a biased")[0]


def _variance_block(lines):
    """The running-variance lines of part 1: from its first line to the next knob."""
    first = next(i for i, line in enumerate(lines) if line.strip().startswith("running variance"))
    end = next(i for i in range(first + 1, len(lines)) if lines[i].startswith("  ") and not lines[i].startswith("   ")
               and not lines[i].strip().startswith("running variance"))
    return [line.strip() for line in lines[first:end]]


def test_a_switching_side_gets_one_translation_per_code_path_never_a_rule_and_an_exception():
    """torch.nn -> tf_keras.auto: the fused path keeps a Bessel variance like torch, the rest a
    biased one. Each path says which inputs take it and what to do there; no unconditional
    N/(N-1) instruction is followed by a 'conditional' line contradicting it."""
    block = [line for line in _variance_block(_lines("torch.nn", "tf_keras.auto")) if not line.startswith("measured")]
    assert block[0] == "running variance: depends on the code path tf_keras.auto takes (2 paths, by input):"
    assert block[1] == ("inputs where the layer takes its fused path: both keep a Bessel-corrected running variance: "
                        "no rescale")
    assert block[2].startswith("every other input: torch.nn keeps a Bessel-corrected running variance, tf_keras.auto "
                               "a biased one: after training in tf_keras.auto, multiply its moving variance by N/(N-1)")
    assert not any("conditional" in line for line in block)
    rescales = [line for line in block if "multiply" in line]
    assert rescales and all(line.startswith(("inputs where", "every other input")) for line in rescales)


def test_each_path_names_what_this_run_measured_on_it():
    """The path split is confirmed by the cells that ran: Bessel cases on rank-4 float32 input
    (the fused path), biased ones on rank 2; a deviation declared for one path is named there."""
    doc = _document("torch.nn", "tf_keras.auto")
    doc["case_meta"] = {"formulas/nchw": _case(rank=4, variance="bessel"), "formulas/nc": _case(rank=2, variance="biased")}
    doc["verdicts"] += [_verdict("formulas/nchw", "tf_keras.auto", "pass"), _verdict("formulas/nc", "tf_keras.auto", "pass")]
    doc["adapters"]["tf_keras.auto"] = {**TF_KERAS_AUTO, "deviations": [
        {"name": "fused-only", "applies_to": "rank 5 and the layer takes its fused path"},
        {"name": "nonfused-only", "applies_to": "N == 0 and not (the layer takes its fused path)"}]}
    block = _variance_block(report(doc, "torch.nn", "tf_keras.auto", "synthetic"))
    fused = next(i for i, line in enumerate(block) if line.startswith("inputs where"))
    other = next(i for i, line in enumerate(block) if line.startswith("every other input"))
    assert block[fused + 1] == ("measured: 1 tf_keras.auto cell(s) with a Bessel-corrected running variance ran, on "
                                "inputs of rank 4 in float32; declared for this path only: fused-only")
    assert block[other + 1] == ("measured: 1 tf_keras.auto cell(s) with a biased running variance ran, on inputs of "
                                "rank 2 in float32; declared for this path only: nonfused-only")


def _case(**changes):
    meta = {"input_dtype": "float32", "param_dtype": "float32", "rank": 2, "epsilon": 1e-5, "epsilon_mode":
            "add_inside_sqrt", "rule": "ema", "decay": 0.9, "variance": "bessel", "zero_debias": False, "schedule": False,
            "extensions": [], "training_n": [8], "update_n": [8], "step_kinds": ["batch+update"],
            "depends_on": ["running_variance"], "mean_to_spread": 0.5}
    return {**meta, **changes}


def test_a_path_both_sides_state_in_the_same_words_is_one_path():
    """Two layers switching on the same declared condition: 2 paths, not 4 (nothing to rescale)."""
    doc = _document("tf_keras.auto", "keras3.tensorflow")
    doc["adapters"]["keras3.tensorflow"] = TF_KERAS_AUTO
    block = _variance_block(report(doc, "tf_keras.auto", "keras3.tensorflow", "synthetic"))
    assert block[0].endswith("take (2 paths, by input):")
    assert not any("multiply" in line for line in block)


@pytest.mark.parametrize("target, message", [
    ("keras3.tensorflow", "epsilon: torch.nn eps default 1e-05 -> keras3.tensorflow eps default 0.001: pass epsilon=1e-05 explicitly"),
    ("tf_keras.auto", "epsilon: torch.nn eps default 1e-05 -> tf_keras.auto eps default 0.001: pass epsilon=1e-05 explicitly"),
    ("flax.linen", "epsilon: eps default 1e-05 in both: nothing to pass"),
])
def test_epsilon_defaults(target, message):
    assert message in _line(_lines("torch.nn", target), "epsilon:")


def test_keras_to_torch_epsilon():
    assert "pass epsilon=0.001 explicitly" in _line(_lines("keras3.jax", "torch.nn"), "epsilon:")[0]


def test_tf_keras_to_keras3_same_spelling_and_conditional_variance():
    lines = _lines("tf_keras.auto", "keras3.tensorflow")
    assert ("momentum: tf_keras.auto momentum=0.99 (weight on the old statistic) -> keras3.tensorflow momentum=0.99 "
            "(weight on the old statistic) (also keras3.tensorflow's default)" in _line(lines, "momentum: tf_keras.auto"))
    assert "epsilon: eps default 0.001 in both: nothing to pass" in _line(lines, "epsilon:")
    fused = _line(lines, "inputs where the layer takes its fused path: tf_keras.auto keeps a Bessel-corrected")[0]
    assert "multiply its moving variance by N/(N-1) to get tf_keras.auto's value" in fused
    assert _line(lines, "every other input: both keep a biased running variance: no rescale")
    assert not any("conditional" in line for line in lines)


@pytest.mark.parametrize("a, b", [("torch.nn", "keras3.torch"), ("keras3.jax", "torch.nn"), ("flax.linen", "tf_keras.auto")])
def test_disagreeing_cells_listed_with_numbers(a, b):
    lines = _lines(a, b)
    text = "\n".join(lines)
    assert "4 cells compared: 1 agree, 3 differ; 1 not compared" in text
    # behaviour differences come before what only one side can express; alike cells share a line
    header = lines.index(f"  {a}: deviation single-value-per-channel-raises [edge] | {b}: pass -- 2 cell(s)")
    assert lines[header + 1].startswith(f"    {a}: raises ValueError ('Expected more than 1 value per channel")
    assert lines[header + 2] == "      2 case(s): degenerate/n1_rank2_train [cpu], degenerate/n1_rank4_1x1_train [cpu]"
    assert lines[header + 3] == f"  {a}: unsupported | {b}: fail -- 1 cell(s)"
    # the worst mismatch by relative error, not the first one
    assert ("running_var step 1: got 2.5, expected 2.0, max abs err 0.5, max rel err 0.25 (+1 outputs)"
            " (a convention: see 1.)") in lines[header + 4]
    assert lines[header + 5] == "      1 case(s): momentum/decay_0.9_biased_3steps [cpu]"
    assert "formulas/rank2_nc_train" not in text and "float16_nc_train" not in text


def test_cli_reads_the_document_and_unknown_name_exits_2(tmp_path, capsys):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(_document("torch.nn", "keras3.tensorflow")))
    assert main(["port", "torch.nn", "keras3.tensorflow", "--results", str(path)]) == 0
    out = capsys.readouterr().out
    assert "momentum=0.9" in out and f"2. Measured differences ({path})" in out
    assert main(["port", "torch.nnn", "keras3.tensorflow", "--results", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown backend 'torch.nnn'" in err[0] and "did you mean: torch.nn" in err[0].lower()
    assert main(["port", "torch", "keras3.jax", "--results", str(path)]) == 2  # a family is not one backend
    members = select_backends(["torch"], [])  # the torch family, compiled and exported rows included
    assert len(members) > 1 and f"'torch' names {len(members)} backends ({', '.join(members)})" in capsys.readouterr().err


@requires("torch")  # without importing torch here: only the host needs it
def test_real_run_of_the_torch_backends(tmp_path, monkeypatch, capsys):
    """``bnconform port`` in this process (no results file: it runs the cells itself, in a torch host)."""
    monkeypatch.chdir(tmp_path)
    code = main(["port", "torch.nn", "torch.functional", "--results", str(tmp_path / "absent.json"), "--cases",
                 str(ROOT / "cases"), "--family", "formulas", "--family", "momentum"])
    run = capsys.readouterr()
    assert code == 0, run.err
    assert ("torch.nn momentum=0.1 (weight on the new batch) -> torch.functional momentum=0.1 (weight on the new "
            "batch) (also torch.functional's default)") in run.out
    assert "eps default 1e-05 in both" in run.out
    # F.batch_norm takes a float momentum only (no cumulative average); nn.BatchNorm has one affine flag
    assert "momentum/cumulative_bessel_5steps [cpu]" in _cases_after(run.out, "    torch.functional: torch.functional "
                                                                   "cannot express these running-statistics rules")
    assert "formulas/scale_on_center_off_train [cpu]" in _cases_after(run.out, "    torch.nn: torch.nn cannot "
                                                                    "express these scale/center settings")
    assert "running them now" in run.err and not (tmp_path / "reports").exists()


def _cases_after(text: str, start: str) -> str:
    """The case list printed under the numbers line that starts with ``start``."""
    lines = text.splitlines()
    found = [i for i, line in enumerate(lines) if line.startswith(start)]
    assert found, f"no line starting {start!r} in:\n{text}"
    return " ".join(lines[i + 1] for i in found)
