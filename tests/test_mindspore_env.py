"""mindspore.nn through its real environment of its own (mindspore 2.10.0 with NumPy < 2, built
with uv in the user cache by bnconform.execution.environments; this process keeps its NumPy 2).

A subprocess plans three cases and runs them with the scheduler, as ``bnconform run --backend
mindspore.nn`` does: a channels-last training step with gradients (mindspore.vjp through
ops.moveaxis) that passes, and two declared findings that must be observed. A missing or broken
environment makes the cells unavailable and the test fails with their reason. The first run
builds the environment (mindspore's wheel is ~770 MB; a minute or two with a reachable registry,
seconds from uv's cache); later runs reuse it.
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
                                "the mindspore.nn environment (mindspore==2.10.0, numpy<2)")
ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "gradients/rank4_nhwc_train": ("pass", []),
    "degenerate/n0_rank2_train": ("deviation", ["empty-batch-shrinks-running-stats"]),
    "formulas/float16_params_offset_train": ("deviation", ["float16-parameters-never-updated"]),
}

RUN = """
import json, sys
from pathlib import Path
from bnconform.caseformat.validation import load_case
from bnconform.execution.plan import plan
from bnconform.execution.scheduler import run_cells
root = Path(sys.argv[1]) / "cases"
cases = [load_case(root / f"{case_id}.json") for case_id in sys.argv[2:]]
verdicts, infos = run_cells(plan(cases, ["mindspore.nn"], ["cpu"]), jobs=1)
print(json.dumps({"verdicts": {v.case: [v.status, list(v.deviations), v.detail] for v in verdicts},
                  "version": infos.get("mindspore.nn", {}).get("version")}))
"""


def test_mindspore_cells_run_in_their_own_environment():
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(RUN), str(ROOT), *CASES], capture_output=True,
                          text=True, timeout=1800, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    got = {case: (status, deviations) for case, (status, deviations, _) in result["verdicts"].items()}
    details = {case: detail for case, (_, _, detail) in result["verdicts"].items()}
    assert got == {case: (status, names) for case, (status, names) in CASES.items()}, details
    assert result["version"] == "2.10.0"  # the environment's mindspore, not this process's (it has none)
