"""``bnconform list`` on a backend that runs in an environment of its own: the version and status
come from that environment's build record, never from the user's environment."""

from __future__ import annotations

import json

from bnconform.adapters.environment import MARKER
from bnconform.adapters.registry import resolve
from bnconform.interfaces.listing import metadata_row


def test_an_unbuilt_environment_says_when_it_is_built(tmp_path, monkeypatch):
    monkeypatch.setenv("BNCONFORM_ENVS", str(tmp_path))
    row = metadata_row("mindspore.nn", "built-in")
    assert " not built " in row and "runs in its own environment mindspore (mindspore==" in row
    assert "bnconform env sync" in row and "not installed" not in row


def test_a_built_environment_reports_the_version_it_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("BNCONFORM_ENVS", str(tmp_path))
    env = resolve("tflearn").python_environment
    env.path.mkdir(parents=True)
    (env.path / MARKER).write_text(json.dumps({"label": env.label, "packages": {"tflearn": "0.4.9", "tensorflow": "2.1"}}))
    row = metadata_row("tflearn", "built-in")
    assert row.split()[2] == "0.4.9" and f"installed in its own environment {env.path}" in row


def test_a_half_built_environment_is_not_built(tmp_path, monkeypatch):
    monkeypatch.setenv("BNCONFORM_ENVS", str(tmp_path))
    (resolve("tflearn").python_environment.path / "bin").mkdir(parents=True)  # no marker: interrupted
    assert metadata_row("tflearn", "built-in").split()[2:4] == ["not", "built"]
