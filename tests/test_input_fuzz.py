"""Everything a user hands in, mutated from real files: one line naming the file, exit 2, nothing
written, memory bounded -- or, where the mutation left a valid input, the command's normal answer.

One hypothesis test per input kind: case files (validate, show), readable descriptions (new),
results documents (report, diff, port), backend manifests and protocol replies (parsed as the exec
adapter parses them). Mutations come from tests/mutations.py: cut the text anywhere, splice junk
in, or replace / delete / wrap / duplicate one value at a random place of the JSON (NaN where an
integer belongs, a shape of 10^9 x 10^9, deep nesting, ...). The searches are derandomized, so CI
tries the same inputs every run; ``pytest --hypothesis-show-statistics`` prints how many each tried.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import tracemalloc
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from conftest import one_error_line
from mutations import mutated_json_text, mutated_text

from bnconform.interfaces import cli
from bnconform.reporting.results import RESULTS_FORMAT

ROOT = Path(__file__).resolve().parent.parent
CASES = ["degenerate/c1_rank2.json", "gradients/ghost_contiguous_train.json", "replicas/r2_equal_train.json",
         "renorm/clipped_r_and_d.json", "weighted/zero_weights_exclude_samples.json", "momentum/decay_0.9_bessel_3steps.json"]
DESCRIPTION = ROOT / "examples" / "published" / "keras_inference_so47567655.yaml"
MEMORY_BOUND = 256 * 2**20  # bytes Python may allocate while one command reads one input
FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
_names = itertools.count()


def _case_texts() -> list[str]:
    found = [ROOT / "cases" / c for c in CASES]
    assert all(p.exists() for p in found), [str(p) for p in found if not p.exists()]
    return [p.read_text(encoding="utf-8") for p in found]


def _bnconform(argv: list[str]) -> tuple[int, str]:
    """(exit status, stderr) of ``bnconform argv`` in this process, with Python's allocations
    traced: more than MEMORY_BOUND at once fails the example."""
    err = io.StringIO()
    tracemalloc.start()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = cli.main([str(a) for a in argv])
            except SystemExit as exit_:
                code = exit_.code
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_BOUND, f"bnconform {argv[0]}: Python allocated {peak / 2**20:.0f} MiB at once"
    return code, err.getvalue()


def _refused_in_one_line(code: int, err: str, path: Path, argv0: str) -> None:
    """bnconform argv0 refused the input: the rule for bad input, with the line naming the file."""
    one_error_line(code, err, path.name)


def _write(tmp_path: Path, text: str, suffix: str) -> Path:
    path = tmp_path / f"input-{next(_names)}{suffix}"  # a new name each time: nothing cached by path
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return path


@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_mutated_case_files(tmp_path, data):
    original = data.draw(st.sampled_from(_case_texts()))
    path = _write(tmp_path, data.draw(st.one_of(mutated_text(original), mutated_json_text(original))), ".json")
    for command in ("validate", "show"):
        code, err = _bnconform([command, path])
        if code != 0:
            _refused_in_one_line(code, err, path, command)


@FUZZ
@given(data=st.data())
def test_mutated_descriptions(tmp_path, data):
    import yaml

    original = DESCRIPTION.read_text(encoding="utf-8")
    as_json = json.dumps(yaml.safe_load(original))
    text = data.draw(st.one_of(mutated_text(original), mutated_json_text(as_json)))
    path = _write(tmp_path, text, ".yaml")
    out = tmp_path / f"{path.stem}-case.json"
    code, err = _bnconform(["new", path, "-o", out, "--expect", data.draw(st.sampled_from(["oracle", "given"]))])
    if code != 0:
        _refused_in_one_line(code, err, path, "new")
        assert not out.exists(), "a refused description wrote its case file"


def _small_results() -> str:
    """A real results document cut to 2 backends x 12 cases (the shipped reports/results.json)."""
    document = json.loads((ROOT / "reports" / "results.json").read_text(encoding="utf-8"))
    assert document["format"] == RESULTS_FORMAT
    keep_adapters = {"torch.nn", "numpy.oracle"}
    keep_cases = sorted({v["case"] for v in document["verdicts"]})[::40]
    document["verdicts"] = [v for v in document["verdicts"] if v["adapter"] in keep_adapters and v["case"] in keep_cases]
    document["adapters"] = {k: v for k, v in document["adapters"].items() if k in keep_adapters}
    document["cases"] = {k: v for k, v in document.get("cases", {}).items() if k in keep_cases}
    document["case_meta"] = {k: v for k, v in document.get("case_meta", {}).items() if k in keep_cases}
    return json.dumps(document)


SMALL_RESULTS = _small_results()


@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_mutated_results_documents(tmp_path, monkeypatch, data):
    from bnconform.interfaces import port

    def no_fresh_run(*args, **kwargs):
        raise _WouldRun
    monkeypatch.setattr(port, "run_document", no_fresh_run)  # a document without the backends: port would run them
    path = _write(tmp_path, data.draw(st.one_of(mutated_text(SMALL_RESULTS), mutated_json_text(SMALL_RESULTS))), ".json")
    pages = tmp_path / f"{path.stem}-pages"
    for argv in (["report", path, "-o", pages / "x.md"], ["diff", path, path],
                 ["port", "torch.nn", "numpy.oracle", "--results", path]):
        try:
            code, err = _bnconform(argv)
        except _WouldRun:
            continue
        if code != 0:  # diff of a document with itself changes no cell: 0 too
            _refused_in_one_line(code, err, path, argv[0])
            assert argv[0] != "report" or not pages.exists(), "a refused document wrote pages"


class _WouldRun(Exception):
    pass


MANIFESTS = [(ROOT / "backends" / name / "bnconform-backend.json").read_text(encoding="utf-8") for name in ("c_reference", "tfjs")]


@settings(FUZZ, max_examples=300)
@given(data=st.data())
def test_mutated_manifests(tmp_path, data):
    """A manifest is read when ``exec:FOLDER`` is resolved: any problem is a RegistryError, whose
    one line the commands print (exit 2), naming the manifest."""
    from bnconform.adapters.exec_backend import adapter_class
    from bnconform.adapters.registry import RegistryError, resolve

    folder = tmp_path / f"backend-{next(_names)}"
    folder.mkdir()
    manifest = data.draw(st.sampled_from(MANIFESTS))
    (folder / "bnconform-backend.json").write_text(
        data.draw(st.one_of(mutated_text(manifest), mutated_json_text(manifest))), encoding="utf-8", errors="surrogatepass")
    try:
        cls = resolve(f"exec:{folder}")
    except RegistryError as exc:
        assert len(str(exc).splitlines()) == 1 and "bnconform-backend.json" in str(exc), str(exc)
        return
    finally:
        adapter_class.cache_clear()
    assert cls.row.name and cls.row.command  # a manifest that still reads is a usable row
    assert isinstance(cls.missing(), (str, type(None)))
    assert isinstance(cls.listed_version(), str)  # what `bnconform list` shows, starting nothing


HANDSHAKE = json.dumps({"protocol": 1, "name": "fake", "version": "1.0", "devices": ["cpu"],
                        "capabilities": {"ranks": [2, 4], "gradients": ["batch"], "dtypes": [["float32", "float32"]]},
                        "deviations": [{"name": "d", "kind": "edge", "applies": {"selector": "training_step",
                                        "args": [1, 1]}, "behaviour": {"mismatches": ["y"]},
                                        "explanation": "why", "link": "https://example.org"}],
                        "decay_parameter": ["momentum", "new"], "defaults": {"epsilon": 1e-5}})
ANSWER = json.dumps({"id": 7, "outputs": [{"y": {"dtype": "float32", "shape": [2, 2], "hex": ["0x1p+0"] * 4},
                                          "running_mean": {"dtype": "float32", "shape": [2], "hex": ["0x0p+0"] * 2},
                                          "num_updates": 1}]})


@settings(FUZZ, max_examples=500)
@given(data=st.data())
def test_mutated_protocol_replies(data):
    """A backend's handshake and answers, mutated: each is read, or refused with a ProtocolError
    (the cell's one-line error), never another exception."""
    from bnconform.adapters.exec_protocol import ProtocolError, answer_to_results, parse_handshake

    for original, parse in ((HANDSHAKE, lambda obj: parse_handshake(obj, "fake")),
                            (ANSWER, lambda obj: answer_to_results(obj, 7, 1))):
        text = data.draw(st.one_of(mutated_text(original), mutated_json_text(original)))
        try:
            obj = json.loads(text)  # the reader's own check: a line that is not JSON kills the backend
        except ValueError:
            continue
        try:
            parse(obj)
        except ProtocolError as exc:
            assert len(str(exc).splitlines()) == 1, str(exc)
