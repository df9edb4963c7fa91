"""One truth however the suite is run: ``pytest`` and ``bnconform run`` over the same selection
write the same results.json (every cell, every backend, every piece of adapter metadata; only
timings and the date may differ), with the same cell ids, into the same kind of directory.

Both run as real processes from the checkout: a registered backend (torch.nn, unavailable where
torch is not installed, which must read the same way too) and an ad hoc ``--adapter`` (whose
metadata was lost under pytest, and whose cells were named after its path there).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SELECTION = [("--backend", "torch.nn"), ("--adapter", "examples.my_numpy_bn:MyNumpyBN"), ("--family", "formulas")]


def _run(command) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *command], check=False, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def _comparable(path: Path) -> dict:
    """The document without what may differ between two runs: seconds per cell and the date."""
    document = json.loads(path.read_text())
    for verdict in document["verdicts"]:
        verdict.pop("seconds", None)
    for run in document["runs"]:
        run.pop("date", None)
    return document


@pytest.fixture(scope="module")
def both(tmp_path_factory) -> tuple[dict, dict]:
    """(the results.json `bnconform run --out A` wrote, the one `pytest --bn-reports B` wrote)."""
    tmp = tmp_path_factory.mktemp("one_truth")
    run = _run(["-m", "bnconform", "run", *[word for pair in SELECTION for word in pair], "--out", tmp / "run"])
    assert run.returncode == 0, run.stderr[-2000:]
    options = [word for option, value in SELECTION for word in (option.replace("--", "--bn-"), value)]
    tested = _run(["-m", "pytest", "-p", "no:randomly", "-q", "cases", *options, "--bn-reports", tmp / "pytest"])
    assert tested.returncode == 0, tested.stdout[-2000:]
    return _comparable(tmp / "run" / "results.json"), _comparable(tmp / "pytest" / "results.json")


def test_adapter_metadata_is_the_same_however_run(both):
    run, tested = both
    assert run["adapters"] == tested["adapters"]
    assert set(run["adapters"]) == {"torch.nn", "example.my_numpy_bn"}
    mine = run["adapters"]["example.my_numpy_bn"]
    assert mine["framework"] == "numpy" and mine["decay_parameter"] == ["decay", "old"]


def test_verdicts_and_cell_ids_are_the_same_however_run(both):
    run, tested = both
    assert run["verdicts"] == tested["verdicts"]
    assert {v["adapter"] for v in run["verdicts"]} == {"torch.nn", "example.my_numpy_bn"}


def test_the_whole_document_but_timings_is_the_same_in_the_same_order(both):
    """In the same order too: the pages choose among equal findings by it."""
    assert both[0] == both[1]


def test_defaults_are_recorded_where_the_framework_runs(both):
    torch_nn = both[0]["adapters"]["torch.nn"]
    if torch_nn.get("unavailable"):
        pytest.skip(f"torch.nn unavailable here: {torch_nn['unavailable']}")
    assert torch_nn["defaults"]["epsilon"] == 1e-05 and torch_nn["defaults"]["decay_parameter"] == 0.1
