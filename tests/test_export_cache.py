"""bnconform.adapters.export_cache: a converted artifact is kept under a key of everything the
conversion reads and handed back without converting; any part of the key that changes, a refusal,
the switch turned off or a folder that cannot be written means converting again."""

from __future__ import annotations

import importlib.metadata

import pytest

from bnconform.adapters import export_cache
from bnconform.adapters.export_cache import artifact_key, cached_artifact, pack, recipe, unpack


class Converter:
    """A conversion that counts its calls and returns distinct bytes each time."""

    def __init__(self):
        self.calls = 0

    def __call__(self) -> bytes:
        self.calls += 1
        return f"artifact {self.calls}".encode()


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("BNCONFORM_EXPORT_CACHE", str(tmp_path / "exports"))
    return tmp_path / "exports"


def _get(convert, row="row", distributions=("pytest",), how="how", subject=b"state"):
    return cached_artifact(row, distributions, how, subject, convert)


def test_a_second_request_reuses_the_first_conversion(folder):
    convert = Converter()
    before = export_cache.COUNTS.copy()
    assert _get(convert) == b"artifact 1"
    assert _get(convert) == b"artifact 1" and convert.calls == 1
    assert export_cache.COUNTS["converted"] - before["converted"] == 1
    assert export_cache.COUNTS["reused"] - before["reused"] == 1
    (stored,) = [p for p in folder.rglob("*") if p.is_file()]
    assert stored.read_bytes() == b"artifact 1" and stored.parent.parent.name == "row"


@pytest.mark.parametrize("part", ["row", "how", "subject"])
def test_every_part_of_the_key_is_a_new_conversion(folder, part):
    convert = Converter()
    _get(convert)
    changed = {"row": "other row", "how": "how v2", "subject": b"state2"}[part]
    assert _get(convert, **{part: changed}) == b"artifact 2" and convert.calls == 2


def test_a_new_version_of_a_distribution_is_a_new_key(monkeypatch):
    key = artifact_key("row", ["pytest"], "how", b"s")
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.0.1" if name == "pytest" else real(name))
    assert artifact_key("row", ["pytest"], "how", b"s") != key
    assert "pytest==0.0.1" in export_cache.versions(["pytest"])
    assert "no-such-distribution==absent" in export_cache.versions(["no-such-distribution"])


def test_the_recipe_is_the_functions_source_text():
    def export_a(model):
        return model.convert(opset=20)

    def export_b(model):
        return model.convert(opset=21)

    assert "opset=20" in recipe(export_a) and recipe(export_a) != recipe(export_b)


def test_a_refusal_is_not_stored(folder):
    def refuse():
        raise ValueError("the converter refuses float64")

    with pytest.raises(ValueError, match="refuses float64"):
        _get(refuse)
    assert not folder.exists() or not any(p.is_file() for p in folder.rglob("*"))
    assert _get(Converter()) == b"artifact 1"


@pytest.mark.parametrize("setting", ["off", "0", "no"])
def test_off_converts_every_time_and_writes_nothing(tmp_path, monkeypatch, setting):
    monkeypatch.setenv("BNCONFORM_EXPORT_CACHE", setting)
    monkeypatch.chdir(tmp_path)
    convert = Converter()
    assert (_get(convert), _get(convert)) == (b"artifact 1", b"artifact 2")
    assert export_cache.cache_folder() is None and not any(tmp_path.iterdir())


def test_a_folder_that_cannot_be_written_costs_only_the_conversion(tmp_path, monkeypatch):
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("BNCONFORM_EXPORT_CACHE", str(blocker / "exports"))
    convert = Converter()
    assert (_get(convert), _get(convert)) == (b"artifact 1", b"artifact 2")


def test_default_folder_follows_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.delenv("BNCONFORM_EXPORT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert export_cache.cache_folder() == tmp_path / "bnconform" / "exports"


def test_pack_keeps_each_part_whole():
    parts = [b"<xml/>", b"", bytes(range(256)) * 3]
    assert unpack(pack(parts)) == parts
