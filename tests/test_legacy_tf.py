"""tflearn, TensorLayer and the real tf-slim through their real environment of their own
(``LEGACY_TF``: tensorflow 2.12.1, numpy < 1.24, built with uv in the user cache by
bnconform.execution.environments; this process keeps its own TensorFlow and NumPy).

A subprocess plans a few cases per row and runs them with the scheduler, as ``bnconform run
--backend tflearn --backend tensorlayer --backend tf_slim`` does: for each row a case that must
pass (with gradients where the row computes them) and declared findings that must be observed
with exactly their names. tflearn and TensorLayer run in one call, so the test also fails if
tflearn's process-wide ``disable_v2_behavior`` reaches TensorLayer's eager host again. A missing
or broken environment makes the cells unavailable and the test fails with their reason. The
first run builds the environment (tensorflow 2.12's wheel is ~600 MB); later runs reuse it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bnconform.execution.environments import uv_command

pytestmark = pytest.mark.skipif(uv_command() is None, reason="uv is not installed (pip install uv), which builds "
                                "the legacy-tf environment of tflearn, tensorlayer and tf_slim (tensorflow==2.12.1, "
                                "numpy<1.24)")
ROOT = Path(__file__).resolve().parents[1]

EXPECTED = {
    "tflearn": {
        "momentum/decay_0.9_biased_3steps": ("pass", []),
        "gradients/rank4_nhwc_train_biased": ("pass", []),
        "degenerate/inf_batch_then_clean_batch_biased": (
            "deviation", ["tflearn: an infinite moving mean becomes NaN on the next update"]),
        "formulas/float64_nhwc_train_biased": ("unsupported", []),  # float32 variables only
    },
    "tensorlayer": {
        "momentum/decay_0.9_biased_3steps": ("pass", []),
        "gradients/rank4_nchw_train_biased": ("pass", []),
        "formulas/scale_off_center_on_train_biased": ("deviation", ["tensorlayer: beta_init=None / gamma_init=None raise"]),
        "gradients/n0_train": ("deviation", ["tensorlayer: an empty batch makes the moving statistics NaN",
                                             "tensorlayer: dgamma of an empty batch is NaN"]),
    },
    "tf_slim": {
        "formulas/rank4_nhwc_train": ("pass", []),
        "formulas/bfloat16_nhwc_train": ("pass", []),  # TF 2.12's own bfloat16 NumPy type, fed through float32
        "formulas/gamma_negative_ncdhw_bfloat16_eval": (
            "deviation", ["tf_slim on TensorFlow 2.12: rank-5 bfloat16 input raises on CPU"]),
    },
}

RUN = """
import json, sys
from pathlib import Path
from bnconform.caseformat.validation import load_case
from bnconform.execution.plan import plan
from bnconform.execution.scheduler import run_cells
expected = json.loads(sys.argv[2])
root = Path(sys.argv[1]) / "cases"
cells, loaded = [], {}
for name, cases in expected.items():
    for case_id in cases:
        loaded.setdefault(case_id, load_case(root / f"{case_id}.json"))
    cells += plan([loaded[c] for c in cases], [name], ["cpu"])
verdicts, infos = run_cells(cells, jobs=2)
print(json.dumps({"verdicts": [[v.adapter, v.case, v.status, sorted(v.deviations), v.detail] for v in verdicts],
                  "versions": {name: info.get("version") for name, info in infos.items()},
                  "defaults": {name: info.get("defaults") for name, info in infos.items()}}))
"""


def test_legacy_tf_rows_run_in_their_own_environment():
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(RUN), str(ROOT), json.dumps(EXPECTED)],
                          capture_output=True, text=True, timeout=1800, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    got = {(name, case): (status, deviations) for name, case, status, deviations, _ in result["verdicts"]}
    details = {f"{case}[{name}]": detail for name, case, _, _, detail in result["verdicts"]}
    want = {(name, case): (status, sorted(names)) for name, cases in EXPECTED.items()
            for case, (status, names) in cases.items()}
    assert got == want, details
    # The environment's libraries, not this process's (it has none of them at these versions).
    assert result["versions"] == {"tflearn": "0.5.0", "tensorlayer": "2.2.5", "tf_slim": "1.1.0"}
    # Read from the libraries' signatures in their host, and measured by the passing momentum cases.
    assert result["defaults"]["tflearn"] == {"decay_parameter": 0.9, "epsilon": 1e-05}
    assert result["defaults"]["tensorlayer"] == {"decay_parameter": 0.9, "epsilon": 1e-05}
