"""``bnconform bench --matrix``'s import floor counts each host environment once.

Backends share host processes by host key (TensorFlow with tf_keras and Keras on TensorFlow, the
JAX family, torch with Keras on torch, ...), so the floor measures one cold import per host key,
not one per backend. The measuring function is replaced here: no framework is imported and
nothing is timed.
"""

from __future__ import annotations

import pytest

from bnconform.execution.adapter_classes import registered
from bnconform.execution.plan import host_key
from bnconform.interfaces import bench


@pytest.fixture
def measured(monkeypatch):
    """Every backend runnable; each cold import "takes" as many seconds as its group has
    backends; the groups measured are recorded in order."""
    calls = []
    monkeypatch.setattr(bench, "missing_requirement", lambda name: None)
    monkeypatch.setattr(bench, "cold_import_seconds", lambda names: calls.append(list(names)) or float(len(names)))
    return calls


def test_one_measurement_per_host_environment(measured, capsys):
    names = list(registered())
    imports = bench.environment_imports(bench.host_groups(names))
    assert len(measured) == len(imports) == len({host_key(n) for n in names})
    assert sorted(n for group in measured for n in group) == sorted(names)  # each backend in exactly one
    assert all(len({host_key(n) for n in group}) == 1 for group in measured)
    assert set(imports) == {host_key(group[0]) for group in measured}


@pytest.mark.parametrize("together", [
    ["tf.nn", "tf_keras.auto", "keras3.tensorflow"],
    ["flax.linen", "haiku", "equinox.batch", "keras3.jax"],
    ["torch.nn", "torch.functional", "keras3.torch"],
])
def test_backends_of_one_environment_share_one_import(measured, together):
    bench.environment_imports(bench.host_groups([*together, "numpy.oracle"]))
    assert sorted(map(sorted, measured)) == sorted([sorted(together), ["numpy.oracle"]])


def test_backends_that_cannot_run_are_not_imported(monkeypatch, measured):
    monkeypatch.setattr(bench, "missing_requirement", lambda name: "tensorflow is not installed" if name == "tf.nn" else None)
    assert bench.host_groups(["tf.nn", "tf_keras.auto"]) == {host_key("tf_keras.auto"): ["tf_keras.auto"]}


def test_the_floor_divides_the_environments_imports_by_the_workers():
    groups = {"tf": ["tf.nn", "tf_keras.auto", "keras3.tensorflow", "tf.fused_batch_norm"], "torch": ["torch.nn"]}
    floor, lines = bench.floor_lines({"tf": 6.0, "torch": 3.0}, groups, workers=2)
    assert floor == 4.5
    assert lines[0] == ("import floor: 9.0 s of cold imports over 2 host environments (5 backends) / 2 workers = 4.5 s")
    assert lines[1].split() == ["6.0", "s", "tf", "(tf.nn,", "tf_keras.auto,", "keras3.tensorflow,", "+1", "more)"]
    assert lines[2].split() == ["3.0", "s", "torch", "(torch.nn)"]


def test_the_framework_floor_adds_the_cells_own_seconds_to_the_imports_per_worker():
    """(imports 6 + 3) + cells inside adapter.run (2 + 4 compiled + 1 eager; skipped cells count
    nothing) = 16 s / 2 workers = 8 s = 8 / 4.5 of the import floor."""
    from bnconform.judging.verdict import Verdict

    def cell(adapter, status, seconds):
        return Verdict(case="c", family="f", adapter=adapter, device="cpu", status=status, seconds=seconds)
    verdicts = [cell("torch.nn+compile", "pass", 2.0), cell("torch.nn+compile", "deviation", 4.0),
                cell("torch.nn", "fail", 1.0), cell("torch.nn", "unsupported", 50.0)]
    (line,) = bench.framework_floor_lines({"tf": 6.0, "torch": 3.0}, verdicts, floor=4.5, workers=2)
    assert line == ("framework floor: 9.0 s of imports + 7.0 s inside adapter.run (compiled 6.0 s, eager 1.0 s) "
                    "= 16.0 s / 2 workers = 8.0 s = 1.78 x the import floor"), line
