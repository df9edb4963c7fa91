"""bnconform.execution.case_cache: a valid case file's checked Case is kept under the hash of its
bytes and of the reading code, and read back without parsing; other bytes, other code, an invalid
file, a damaged kept file, the switch turned off or a folder that cannot be written mean reading
the file again (and an invalid file still fails with its one line)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bnconform.caseformat import validation
from bnconform.caseformat.casefile import dumps_case
from bnconform.caseformat.validation import CaseError
from bnconform.execution import case_cache

CASES = Path(__file__).resolve().parent.parent / "cases"
SAMPLE = CASES / "momentum" / "decay_0.1_bessel_3steps.json"


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("BNCONFORM_CASE_CACHE", str(tmp_path / "kept"))
    return tmp_path / "kept"


@pytest.fixture
def sample(tmp_path) -> Path:
    path = tmp_path / "momentum" / SAMPLE.name
    path.parent.mkdir()
    shutil.copy(SAMPLE, path)
    return path


class CountedReads:
    """validation.load_case, counting how often the file itself is read."""

    def __init__(self, monkeypatch):
        self.calls, self._real = 0, validation.load_case
        monkeypatch.setattr(validation, "load_case", self)

    def __call__(self, path):
        self.calls += 1
        return self._real(path)


def _same_case(a, b) -> bool:
    """The same path and the same case file text (every field and array, written out again)."""
    return a.path == b.path and dumps_case(a) == dumps_case(b)


def test_a_second_load_reads_the_kept_case(folder, sample, monkeypatch):
    reads = CountedReads(monkeypatch)
    first = case_cache.load_case(sample)
    second = case_cache.load_case(sample)
    assert reads.calls == 1 and len(list(folder.rglob("*.pickle"))) == 1
    assert _same_case(first, second) and _same_case(second, validation.load_case(sample))


def test_the_kept_case_names_the_path_it_was_asked_for(folder, sample, tmp_path):
    case_cache.load_case(sample)
    twin = tmp_path / "elsewhere" / sample.name
    twin.parent.mkdir()
    shutil.copy(sample, twin)
    assert case_cache.load_case(twin).path == str(twin)


def test_other_bytes_are_read_again(folder, sample, monkeypatch):
    case_cache.load_case(sample)
    reads = CountedReads(monkeypatch)
    sample.write_text(sample.read_text().replace('"description": "', '"description": "changed: ', 1))
    assert case_cache.load_case(sample).description.startswith("changed: ")
    assert reads.calls == 1 and len(list(folder.rglob("*.pickle"))) == 2


def test_other_reading_code_is_read_again(folder, sample, monkeypatch):
    case_cache.load_case(sample)
    reads = CountedReads(monkeypatch)
    monkeypatch.setattr(case_cache, "code_fingerprint", lambda: b"another version of the case format")
    case_cache.load_case(sample)
    assert reads.calls == 1


def test_an_invalid_file_fails_every_time_and_is_not_kept(folder, sample):
    sample.write_text(sample.read_text().replace('"format_version"', '"format_verzion"', 1))
    for _ in range(2):
        with pytest.raises(CaseError, match=str(sample)):
            case_cache.load_case(sample)
    assert not list(folder.rglob("*.pickle"))


def test_a_damaged_kept_file_means_reading_the_case_again(folder, sample, monkeypatch):
    case_cache.load_case(sample)
    (kept,) = folder.rglob("*.pickle")
    kept.write_bytes(b"not a pickle")
    reads = CountedReads(monkeypatch)
    assert case_cache.load_case(sample).id == "momentum/decay_0.1_bessel_3steps" and reads.calls == 1


def test_off_keeps_nothing(tmp_path, sample, monkeypatch):
    monkeypatch.setenv("BNCONFORM_CASE_CACHE", "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    reads = CountedReads(monkeypatch)
    case_cache.load_case(sample)
    case_cache.load_case(sample)
    assert reads.calls == 2 and not (tmp_path / "xdg").exists()


def test_an_unwritable_folder_still_loads(tmp_path, sample, monkeypatch):
    blocked = tmp_path / "a file, not a folder"
    blocked.write_text("")
    monkeypatch.setenv("BNCONFORM_CASE_CACHE", str(blocked))
    assert case_cache.load_case(sample).id == "momentum/decay_0.1_bessel_3steps"
    assert not list(tmp_path.rglob(".partial-*"))


def test_the_folder_is_bounded_by_removing_the_least_recently_used(folder, sample, monkeypatch):
    """Above MAX_KEPT kept cases, a process keeping a new one first removes the least recently
    used (a read-back counts as a use) down to 80 % of the bound."""
    import os
    import pickle

    monkeypatch.setattr(case_cache, "MAX_KEPT", 5)
    text = sample.read_text()
    variants = []
    for n in range(6):  # six different files: six kept cases, the first read back last
        variant = sample.parent / f"v{n}.json"
        variant.write_text(text.replace('"description": "', f'"description": "v{n} ', 1))
        variants.append(variant)
        case_cache.load_case(variant)
    kept = sorted(folder.rglob("*.pickle"))
    for age, path in enumerate(kept):  # distinct last-use times, an hour apart, long ago
        os.utime(path, (1_000_000 + 3600 * age, 1_000_000 + 3600 * age))
    oldest_case = pickle.loads(kept[0].read_bytes())  # read directly: not a use
    case_cache.load_case(variants[[v.name for v in variants].index(Path(oldest_case.path).name)])  # used again
    monkeypatch.setattr(case_cache, "_PRUNED", set())  # a new process
    newest = sample.parent / "v6.json"
    newest.write_text(text.replace('"description": "', '"description": "v6 ', 1))
    case_cache.load_case(newest)
    left = {case_cache._read_kept(p).description.split()[0] for p in folder.rglob("*.pickle")}
    assert len(left) == 5 and "v6" in left and oldest_case.description.split()[0] in left, left


def test_a_read_only_cache_still_serves_its_cases(folder, sample, monkeypatch):
    case_cache.load_case(sample)
    reads = CountedReads(monkeypatch)

    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")
    monkeypatch.setattr(case_cache.os, "utime", refuse)
    assert case_cache.load_case(sample).id == "momentum/decay_0.1_bessel_3steps" and reads.calls == 0
