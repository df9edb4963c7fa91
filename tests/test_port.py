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

from bnconform.reporting import results
from bnconform.judging.capabilities import Capabilities, describe
from bnconform.interfaces.cli import main
from bnconform.interfaces.port import report
from bnconform.judging.selectors import where

ROOT = Path(__file__).resolve().parents[1]
PLAIN_EMA = dict(epsilon_modes={"add_inside_sqrt"}, zero_debias={False}, num_updates_schedule={False})


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


RAISES_N1 = dict(detail="raises ValueError ('Expected more than 1 value per channel when training')",
                 deviations=["single-value-per-channel-raises"], kinds=["edge"])
FAIL_Y = dict(detail="step 0: y[0,1]=0.49 ...", mismatches=[
    {"step": 0, "output": "y", "index": [0, 1], "expected": 0.5, "got": 0.49, "max_abs_error": 0.01,
     "max_rel_error": 0.02, "ulps": 9e13, "reason": "outside tolerance"},
    {"step": 1, "output": "running_var", "index": [1], "expected": 2.0, "got": 2.5, "max_abs_error": 0.5,
     "max_rel_error": 0.25, "ulps": 1e15, "reason": "outside tolerance"}])


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
    rescale = _line(lines, "running variance: torch.nn keeps a Bessel-corrected")[0]
    assert "multiply its moving variance by N/(N-1)" in rescale and "values per channel" in rescale


@pytest.mark.parametrize("source", ["tf_keras.auto", "keras3.tensorflow", "keras3.jax", "keras3.torch", "flax.linen"])
def test_old_weight_apis_to_torch_momentum_and_rescale(source):
    lines = _lines(source, "torch.nn")
    assert any("momentum=0.99 (weight on the old statistic) -> torch.nn momentum=0.01 (weight on the new batch); "
               "torch.nn's default is momentum=0.1: pass momentum=0.01 explicitly" in line for line in lines)
    assert "multiply its moving variance by (N-1)/N" in _line(lines, f"running variance: {source} keeps a biased")[0]


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
    assert _line(lines, "running variance: both can keep a biased running variance")
    conditional = _line(lines, "running variance, conditional: tf_keras.auto")[0]
    assert "Bessel-corrected" in conditional and "the layer takes its fused path" in conditional
    assert not any("N/(N-1)" in line for line in lines)


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
    assert "'torch' names 4 backends" in capsys.readouterr().err


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
