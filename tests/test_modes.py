"""The execution-mode axis: every registered row declares how it runs the layer, and a row that
compiles, exports or folds another names that eager row and sorts right after it."""

from __future__ import annotations

import pytest

from bnconform.adapters.registry import known, resolve
from bnconform.execution.plan import adapter_metadata
from bnconform.judging.verdict import MODES
from bnconform.reporting.pages.main import _modes

ROWS = sorted(known())


@pytest.mark.parametrize("name", ROWS)
def test_row_declares_a_mode_and_its_eager_partner(name):
    cls = resolve(name)
    assert cls.execution_mode in MODES, f"{name}: Expected: mode in {MODES}. Received: {cls.execution_mode!r}"
    if cls.execution_mode == "eager":
        assert cls.eager_row == "", f"{name}: an eager row names no eager_row (Received: {cls.eager_row!r})"
        return
    partner = resolve(cls.eager_row)
    assert partner.execution_mode == "eager", f"{name}: eager_row {cls.eager_row!r} is itself {partner.execution_mode}"
    assert name.startswith(cls.eager_row + "+"), f"{name}: Expected: a name '{cls.eager_row}+<how>'"


def test_a_transformed_row_sorts_right_after_its_eager_row():
    """'+' sorts before '.', so torch.nn+compile comes before torch.nn.SyncBatchNorm."""
    names = sorted(["torch.nn.SyncBatchNorm", "torch.nn+compile", "torch.nn", "torch.functional"])
    assert names == ["torch.functional", "torch.nn", "torch.nn+compile", "torch.nn.SyncBatchNorm"]


def test_metadata_and_first_screen_name_the_mode():
    meta = adapter_metadata("torch.nn")
    assert (meta["mode"], meta["eager_row"]) == ("eager", "")
    document = {"adapters": {"torch.nn": meta, "torch.nn+compile": {**meta, "mode": "compiled", "eager_row": "torch.nn"},
                             "x+onnx": {**meta, "mode": "exported", "eager_row": "x"}}}
    assert _modes(document) == ["- Execution modes beside eager: compiled: torch.nn+compile (of torch.nn) · "
                                "exported: x+onnx (of x)"]
    assert _modes({"adapters": {"torch.nn": meta}}) == []
