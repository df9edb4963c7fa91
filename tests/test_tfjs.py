"""TensorFlow.js through the backend protocol (backends/tfjs): the hex-float codec in JavaScript,
the two rows' declarations, and what they find. Needs node and `npm ci --prefix backends/tfjs`;
without them the rows are unavailable with that command, which is tested here too.
"""

from __future__ import annotations

import json
import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from bnconform.adapters.exec_protocol import parse_handshake
from bnconform.adapters.registry import resolve
from bnconform.judging.judge import judge
from bnconform.caseformat.validation import load_case

ROOT = Path(__file__).resolve().parents[1]
TFJS = ROOT / "backends" / "tfjs"
INSTALLED = shutil.which("node") is not None and (TFJS / "node_modules" / "@tensorflow" / "tfjs").is_dir()
needs_tfjs = pytest.mark.skipif(not INSTALLED, reason="node or backends/tfjs/node_modules missing: "
                                                       "npm ci --prefix backends/tfjs")


def test_without_node_modules_the_rows_are_unavailable_with_the_npm_command(tmp_path):
    folder = tmp_path / "tfjs"
    shutil.copytree(TFJS, folder, ignore=shutil.ignore_patterns("node_modules"))
    for row in ("tfjs.batchNorm", "tfjs.layers"):
        reason = resolve(f"exec:{folder}#{row}")().unavailable_reason()
        assert reason.endswith(f"; install it with: npm ci --prefix {folder} (after installing Node.js >= 18 and npm), or bnconform setup")


def _random_doubles(count: int) -> list[float]:
    """Random float64 bit patterns (every exponent, subnormals included) plus the special values."""
    rng = random.Random(12)
    values = [struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0] for _ in range(count)]
    return values + [0.0, -0.0, 5e-324, -2.2250738585072014e-308, 1.7976931348623157e308, float("inf"),
                     float("-inf"), float("nan"), 1.0, 0.1]


@needs_tfjs
def test_the_javascript_hex_float_codec_reproduces_every_float64_exactly():
    values = _random_doubles(20000)
    texts = ["nan" if v != v else v.hex() for v in values]
    script = ("const {parseHexFloat, hexFloat} = require('./hexfloat');"
              "const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
              "process.stdout.write(JSON.stringify(input.map((t) => hexFloat(parseHexFloat(t)))));")
    done = subprocess.run(["node", "-e", script], cwd=TFJS, input=json.dumps(texts), capture_output=True, text=True,
                          check=True)
    assert json.loads(done.stdout) == texts  # Python's float.hex() text, character for character


def _handshake(row: str) -> dict:
    done = subprocess.run(["node", "backend.js", row], cwd=TFJS, input="", capture_output=True, text=True, timeout=60)
    return json.loads(done.stdout.splitlines()[0])


@needs_tfjs
def test_each_row_says_who_it_is_and_what_it_can_express():
    installed = json.loads((TFJS / "node_modules/@tensorflow/tfjs/package.json").read_text())["version"]
    locked = json.loads((TFJS / "package.json").read_text())["dependencies"]["@tensorflow/tfjs"]
    stateless, layers = parse_handshake(_handshake("batchNorm"), "tfjs.batchNorm"), parse_handshake(_handshake("layers"), "tfjs.layers")
    assert stateless.version == layers.version == installed == locked
    assert stateless.capabilities.step_kinds == {("batch", False), ("running", False)}
    assert layers.capabilities.step_kinds == {("batch", True), ("running", False)}
    assert layers.capabilities.running_variance == {"biased"} and layers.capabilities.ranks == {2, 3, 4}
    # The layer's documented defaults (js.tensorflow.org: momentum 0.99, epsilon 1e-3), read from the layer.
    assert layers.defaults == {"decay_parameter": 0.99, "epsilon": 0.001} and layers.decay_parameter == ("momentum", "old")


CASES = {
    # momentum = decay (weight on the old statistic) and a biased moving variance: a plain pass
    "momentum/decay_0.9_biased_rank4_nhwc": ("pass", []),
    # axis 1: the CPU kernel walks the reshaped [1, C, 1, 1] parameters as if channels were last
    "formulas/rank4_nchw_train_biased": ("deviation", ["channels-first-cyclic-parameters"]),
    # scale: false in training reads this.gamma.read() of an undefined weight
    "formulas/scale_off_center_on_train_biased": ("deviation", ["scale-or-center-off-crashes-training"]),
    # an empty training batch moves the moving statistics toward (0, 0)
    "degenerate/n0_rank2_train": ("deviation", ["empty-batch-updates-moving-stats"]),
    # moving -= (moving - batch) * (1 - momentum): an infinite moving mean becomes Inf - Inf = NaN
    "degenerate/inf_batch_then_clean_batch_biased": ("deviation", ["moving-average-turns-infinite-mean-nan"]),
    # rank 5: "batchNormalization is not implemented for array of rank 5 yet"
    "formulas/rank5_ncdhw_train_biased": ("unsupported", []),
}


@needs_tfjs
def test_the_layer_row_finds_what_its_declarations_say():
    adapter = resolve("tfjs.layers")()
    try:
        verdicts = {case_id: judge(adapter, load_case(ROOT / "cases" / f"{case_id}.json"), "cpu") for case_id in CASES}
    finally:
        adapter.close()
    assert {k: (v.status, v.deviations) for k, v in verdicts.items()} == CASES, {k: v.detail for k, v in verdicts.items()}
    assert verdicts["formulas/rank5_ncdhw_train_biased"].detail.startswith("tfjs.layers cannot express these input ranks")


@needs_tfjs
def test_the_stateless_row_normalizes_channels_first_and_training_batches_through_tf_moments():
    adapter = resolve("tfjs.batchNorm")()
    try:
        verdicts = [judge(adapter, load_case(ROOT / "cases" / f"{c}.json"), "cpu")
                    for c in ("formulas/rank4_nchw_eval", "momentum/train_without_update_only")]
    finally:
        adapter.close()
    assert [v.status for v in verdicts] == ["pass", "pass"], [v.detail for v in verdicts]
    assert verdicts[1].compared[:3] == ["y", "batch_mean", "batch_var"]
