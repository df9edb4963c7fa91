"""The language-neutral backend protocol (docs/protocol.md) from the Python side: handshake data
becomes the same capabilities and verified deviations as a Python adapter's, answers decode
bit-exactly, and a backend executable that crashes, hangs, writes garbage, speaks another protocol
version, is not installed or does not compile costs only its own cells, each with a verdict that
says which. The executables here are deliberately broken Python scripts (and the C kernel).
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from bnconform.adapters.exec_backend import ExecAdapter
from bnconform.adapters.exec_protocol import (ProtocolError, answer_to_results, capabilities_from_json,
                                              deviation_from_json, parse_handshake, selector_from_json)
from bnconform.adapters.registry import RegistryError, resolve
from bnconform.execution.plan import discover_cases, plan
from bnconform.execution.scheduler import run_cells
from bnconform.judging.judge import judge
from bnconform.caseformat.validation import load_case

ROOT = Path(__file__).resolve().parents[1]
CASES = ROOT / "cases"

# A backend in Python that speaks the protocol with the oracle's numbers, and misbehaves on purpose
# when the case id contains the word given as its first argument (argv[2] = how).
FAKE_BACKEND = textwrap.dedent('''
    import json, os, signal, sys, time
    from bnconform.reference import oracle
    from bnconform.caseformat.casefile import case_from_json
    from bnconform.caseformat.encoding import encode_array

    trigger, how = sys.argv[1], sys.argv[2]
    handshake = json.loads(os.environ.get("FAKE_HANDSHAKE") or sys.argv[3])
    send = lambda obj: print(json.dumps(obj), flush=True)
    if how == "die-before-handshake":
        sys.exit(7)
    send(handshake)

    def outputs(case):
        for step in case["steps"]:
            step["expected"] = {}
        results = oracle.run_case(case_from_json(case))
        keep = ("y", "batch_mean", "batch_var", "running_mean", "running_var")
        return [{**{k: encode_array(v, "float64") for k, v in r.items() if k in keep and v is not None},
                 "num_updates": int(r["num_updates"])} for r in results]

    for line in sys.stdin:
        request = json.loads(line)
        hit = trigger in request["case"]["id"]
        if hit and how == "exit":
            os._exit(3)
        if hit and how == "segfault":
            os.kill(os.getpid(), signal.SIGSEGV)
        if hit and how == "hang":
            time.sleep(3600)
        if hit and how == "garbage":
            print("hello from a debug print", flush=True)
            continue
        if hit and how == "endless":  # output that never ends a line
            while True:
                sys.stdout.write("x" * 65536)
        if hit and how == "flood":  # answers nobody asked for, without end
            while True:
                send({"id": request["id"], "unsupported": "again"})
        if hit and how == "raise":
            send({"id": request["id"], "error": {"type": "RangeError", "message": "batch of one value"}})
        elif hit and how == "unsupported":
            send({"id": request["id"], "unsupported": "no such knob here"})
        elif hit and how == "wrong-id":
            send({"id": request["id"] + 1, "outputs": []})
        else:
            send({"id": request["id"], "outputs": outputs(request["case"])})
''')

EVERYTHING = {"protocol": 1, "name": "fake", "version": "0.1", "devices": ["cpu"],
              "capabilities": {"extensions": [], "gradients": []}, "deviations": []}


def make_backend(folder: Path, trigger: str = "-none-", how: str = "", handshake: dict | None = None,
                 case_timeout: float = 30, extra: dict | None = None) -> str:
    """A backend folder (manifest + fake script); returns its exec: target."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "fake.py").write_text(FAKE_BACKEND)
    manifest = {"protocol": 1, "framework": "fake", "timeouts": {"startup": 30, "case": case_timeout},
                "backends": [{"name": "fake", "command": [sys.executable, "fake.py", trigger, how,
                                                         json.dumps(handshake or EVERYTHING)]}],
                **(extra or {})}
    (folder / "bnconform-backend.json").write_text(json.dumps(manifest))
    return f"exec:{folder}"


@pytest.fixture(autouse=True)
def _bnconform_importable(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))


def _case(case_id: str):
    return load_case(CASES / f"{case_id}.json")


def _judge_all(target: str, case_ids):
    adapter = resolve(target)()
    try:
        return [judge(adapter, _case(c), "cpu") for c in case_ids]
    finally:
        adapter.close()


# --- Handshake data -> the objects a Python adapter declares ---------------------------------------

def test_capabilities_and_selectors_from_data_mean_what_python_declarations_mean():
    caps = capabilities_from_json({
        "ranks": [2, 4], "dtypes": [["float32", "float32"]], "step_kinds": [["batch", True]],
        "zero_debias": [False], "when": [{"applies": {"selector": "rank_in", "args": [4]},
                                          "set": {"running_variance": ["bessel"]}}]})
    assert caps.ranks == {2, 4} and caps.dtypes == {("float32", "float32")} and caps.step_kinds == {("batch", True)}
    rank4, rank2 = _case("formulas/rank4_nchw_train"), _case("formulas/rank2_nc_train")
    assert caps.for_case(rank4, "cpu").running_variance == {"bessel"}
    assert caps.for_case(rank2, "cpu").running_variance == {"biased", "bessel"}
    selector = selector_from_json({"all": [{"selector": "training_step", "args": [1, 1]},
                                           {"not": {"cases": ["degenerate/n1_rank2_train"]}}]}, "/s")
    assert selector.describe() == ("a training step of exactly one value per channel (N == 1) and "
                                   "not (the cases degenerate/n1_rank2_train)")
    assert selector(_case("degenerate/n1_rank4_1x1_train"), "cpu")
    assert not selector(_case("degenerate/n1_rank2_train"), "cpu")
    assert not selector(rank2, "cpu")


def test_a_variant_deviation_from_data_rounds_the_cases_own_knob():
    deviation = deviation_from_json({
        "name": "eps32", "kind": "precision", "applies": {"selector": "every_case"},
        "behaviour": {"variant": {"epsilon": {"rounded_to": "float32"}, "running_stats": {"decay": 0.5}},
                      "text": "epsilon held in float32"},
        "explanation": "stores epsilon as a float32 attribute", "link": "https://example.org/x"}, "/d")
    case = _case("formulas/rank2_nc_train")
    changed = deviation.behaviour.variant(case)
    assert changed.config.epsilon == float(np.float32(case.config.epsilon)) != case.config.epsilon
    assert changed.config.running_stats.decay == 0.5
    assert deviation.applies_to == "every case"


@pytest.mark.parametrize("mutate, where", [
    (lambda h: h.update(protocol=2), "handshake/protocol: Expected: 1"),
    (lambda h: h.update(name="other"), "handshake/name: Expected: 'fake'"),
    (lambda h: h.update(colour="red"), "handshake: Expected: fields among"),
    (lambda h: h.update(keeps_state="no"), "handshake/keeps_state: Expected: true or false"),
    (lambda h: h["capabilities"].update(ranks=[6]), "handshake/capabilities/ranks: Expected: values among"),
    (lambda h: h["capabilities"].update(momentum=[0.9]), "handshake/capabilities/momentum: Expected: a Capabilities field"),
    (lambda h: h.update(deviations=[{"name": "x", "kind": "bug", "applies": {}, "behaviour": {},
                                     "explanation": "", "link": ""}]), "handshake/deviations/0/kind"),
    (lambda h: h.update(deviations=[{"name": "x", "kind": "edge", "applies": {"selector": "nope"},
                                     "behaviour": {"raises": "E"}, "explanation": "", "link": ""}]),
     "handshake/deviations/0/applies/selector: Expected: one of every_case"),
])
def test_a_malformed_handshake_names_the_field_and_what_was_expected(mutate, where):
    handshake = json.loads(json.dumps(EVERYTHING))
    mutate(handshake)
    with pytest.raises(ProtocolError, match="Received") as caught:
        parse_handshake(handshake, "fake")
    assert str(caught.value).startswith(where)


def test_answers_decode_bit_exactly_and_bad_ones_are_protocol_errors():
    values = [-0.0, 5e-324, float.fromhex("0x1.fffffep+127"), float("nan"), float("-inf"), 1 / 3]
    array = {"dtype": "float64", "shape": [6], "hex": [v.hex() if v == v else "nan" for v in values]}
    kind, steps = answer_to_results({"id": 4, "outputs": [{"y": array, "num_updates": 2, "batch_mean": None}]}, 4, 1)
    got = steps[0]["y"]
    assert kind == "outputs" and steps[0]["num_updates"] == 2 and "batch_mean" not in steps[0]
    assert [np.float64(v).tobytes() for v in got if v == v] == [np.float64(v).tobytes() for v in values if v == v]
    bad = [({"id": 5, "outputs": []}, "answer/id: Expected: 4"),
           ({"id": 4, "outputs": []}, "answer/outputs: Expected: 1 step objects"),
           ({"id": 4, "outputs": [{"why": 1}]}, "answer/outputs/0/why: Expected: an output among"),
           ({"id": 4, "outputs": [{"y": {**array, "dtype": "float16"}}]}, "answer/outputs/0/y/hex/1: Expected: a value exactly"),
           ({"id": 4, "outputs": [], "error": {}}, "answer: Expected: id and exactly one of")]
    for answer, message in bad:
        with pytest.raises(ProtocolError) as caught:
            answer_to_results(answer, 4, 1)
        assert str(caught.value).startswith(message)
    kind, exc = answer_to_results({"id": 4, "error": {"type": "RangeError", "message": "no"}}, 4, 1)
    assert kind == "error" and type(exc).__name__ == "RangeError" and str(exc) == "no"


# --- Running executables --------------------------------------------------------------------------

def test_a_correct_backend_passes_through_the_protocol(tmp_path):
    target = make_backend(tmp_path / "good")
    verdicts = _judge_all(target, ["formulas/rank4_nchw_train", "momentum/decay_0.9_bessel_3steps", "degenerate/nan_in_one_channel"])
    assert [v.status for v in verdicts] == ["pass"] * 3, [v.detail for v in verdicts]
    assert verdicts[1].compared == ["y", "batch_mean", "batch_var", "running_mean", "running_var", "num_updates"]
    assert resolve(target)().framework_version() == "0.1"  # the handshake's version, read once per process


@pytest.mark.parametrize("how, detail", [
    ("exit", "fake: process ended (exit code 3) while running momentum/"),
    ("segfault", "fake: process ended (killed by SIGSEGV) while running momentum/"),
    ("hang", "fake: no answer within 1 s while running momentum/"),
    ("garbage", "fake: wrote a line that is not JSON while running momentum/"),
    ("wrong-id", "fake: answer/id: Expected: 2 (the request's id). Received: 3"),
])
def test_a_crash_hang_or_garbage_costs_the_cell_in_flight_and_the_next_case_runs(tmp_path, how, detail):
    target = make_backend(tmp_path / how, trigger="momentum", how=how, case_timeout=1)
    first, broken, after = _judge_all(target, ["formulas/rank2_nc_train", "momentum/decay_0.9_bessel_3steps",
                                               "formulas/rank4_nchw_train"])
    assert first.status == "pass" and after.status == "pass", (first.detail, after.detail)
    assert broken.status == "error" and broken.detail.startswith(f"BackendFailure: {detail}"), broken.detail


def test_a_line_without_end_is_cut_off_and_costs_the_cell(tmp_path):
    """A backend writing without a newline cannot take the controller's memory: the reader stops
    at its bound, the backend is killed, the next case runs in a fresh one."""
    target = make_backend(tmp_path / "endless", trigger="momentum", how="endless", case_timeout=60)
    first, broken, after = _judge_all(target, ["formulas/rank2_nc_train", "momentum/decay_0.9_bessel_3steps",
                                               "formulas/rank4_nchw_train"])
    assert first.status == "pass" and after.status == "pass", (first.detail, after.detail)
    assert broken.status == "error" and broken.detail.startswith(
        "BackendFailure: fake: wrote a line longer than 64 Mi characters while running momentum/"), broken.detail


def test_a_flood_of_lines_nobody_asked_for_costs_one_cell_of_that_backend(tmp_path):
    """Its first line answers the case in flight (unsupported, as written); the lines after it
    break the protocol, and the backend's next cell is an error naming that (or the stale answer
    it reads, if it asks before they arrive); the cell after runs in a fresh process."""
    target = make_backend(tmp_path / "flood", trigger="momentum", how="flood", case_timeout=60)
    verdicts = _judge_all(target, ["formulas/rank2_nc_train", "momentum/decay_0.9_bessel_3steps",
                                   "formulas/rank4_nchw_train", "formulas/rank2_nc_train"])
    assert [v.status for v in verdicts] == ["pass", "unsupported", "error", "pass"], [v.detail for v in verdicts]
    assert "nobody asked for" in verdicts[2].detail or "answer/id" in verdicts[2].detail, verdicts[2].detail


def test_wrong_protocol_version_costs_only_that_backends_cells_with_the_reason(tmp_path):
    target = make_backend(tmp_path / "v2", handshake={**EVERYTHING, "protocol": 2})
    cases = [c for c in discover_cases(CASES, ["formulas"]) if c.id in ("formulas/rank2_nc_train", "formulas/rank4_nchw_train")]
    verdicts, _ = run_cells(plan(cases, [target, "numpy.oracle"]), jobs=2, timeout=60)
    mine = [v for v in verdicts if v.adapter == "fake"]
    assert len(mine) == 2 and all(v.status == "error" for v in mine)
    assert all("handshake/protocol: Expected: 1 (the protocol version this bnconform speaks). Received: 2" in v.detail
               for v in mine), mine[0].detail
    assert all(v.status == "pass" for v in verdicts if v.adapter == "numpy.oracle")


def test_a_backend_that_dies_before_its_handshake_errors_every_cell(tmp_path):
    target = make_backend(tmp_path / "dead", how="die-before-handshake")
    verdicts = _judge_all(target, ["formulas/rank2_nc_train", "formulas/rank4_nchw_train"])
    assert all(v.status == "error" and "process ended (exit code 7) before its handshake" in v.detail for v in verdicts)


def test_missing_requirements_make_cells_unavailable_with_the_install_command(tmp_path):
    target = make_backend(tmp_path / "absent", extra={"requires": {"executables": ["no-such-interpreter-xyz"],
                                                                    "files": ["node_modules/x/package.json"]},
                                                       "install": "npm ci --prefix {folder}"})
    cases = discover_cases(CASES, ["formulas"])[:2]
    verdicts, _ = run_cells(plan(cases, [target]), jobs=1)
    assert {v.status for v in verdicts} == {"unavailable"}
    assert verdicts[0].detail == "no-such-interpreter-xyz not found on PATH; install it with: npm ci --prefix " + str(tmp_path / "absent")


def test_declared_deviations_from_data_are_verified_like_python_ones(tmp_path):
    raises = {"name": "n1-raises", "kind": "edge", "applies": {"selector": "training_step", "args": [1, 1]},
              "behaviour": {"raises": "RangeError", "match": "one value"}, "explanation": "refuses N = 1",
              "link": "https://example.org/n1"}
    stale = {**raises, "name": "nchw-y", "kind": "defect", "applies": {"selector": "channel_position_in", "args": ["first"]},
             "behaviour": {"mismatches": ["y"], "text": "y differs"}}
    handshake = {**EVERYTHING, "deviations": [raises, stale]}
    target = make_backend(tmp_path / "dev", trigger="n1_", how="raise", handshake=handshake)
    n1, nchw, plain = _judge_all(target, ["degenerate/n1_rank2_train", "formulas/rank4_nchw_train", "formulas/rank4_nhwc_train"])
    assert n1.status == "deviation" and n1.deviations == ["n1-raises"] and n1.kinds == ["edge"]
    assert nchw.status == "fail" and nchw.detail.startswith("declared deviation not observed (nchw-y: y differs)")
    assert plain.status == "pass"


def test_an_unsupported_answer_is_an_unsupported_cell_and_capabilities_presettle(tmp_path):
    handshake = {**EVERYTHING, "capabilities": {"ranks": [2], "extensions": [], "gradients": []}}
    target = make_backend(tmp_path / "uns", trigger="rank2", how="unsupported", handshake=handshake)
    verdicts, _ = run_cells(plan([_case("formulas/rank2_nc_train"), _case("formulas/rank4_nchw_train")], [target]), jobs=1)
    assert [v.status for v in verdicts] == ["unsupported", "unsupported"]
    assert verdicts[0].detail == "fake: no such knob here"
    assert verdicts[1].detail.startswith("fake cannot express these input ranks. Expected: [2]. Received: 4")


def test_a_manifest_with_several_rows_needs_a_row_name(tmp_path):
    folder = tmp_path / "two"
    make_backend(folder)
    manifest = json.loads((folder / "bnconform-backend.json").read_text())
    manifest["backends"].append({**manifest["backends"][0], "name": "fake2"})
    (folder / "bnconform-backend.json").write_text(json.dumps(manifest))
    with pytest.raises(RegistryError, match=r"Expected: one backend row .* exec:.*#fake, exec:.*#fake2\. Received: 2 rows"):
        resolve(f"exec:{folder}")
    assert issubclass(resolve(f"exec:{folder}#fake2"), ExecAdapter) and resolve(f"exec:{folder}#fake2").name == "fake2"


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (cc) on PATH")
def test_the_c_kernel_is_compiled_on_first_use_and_a_compile_error_is_each_cells_error(tmp_path):
    folder = tmp_path / "c"
    shutil.copytree(ROOT / "backends" / "c_reference", folder, ignore=shutil.ignore_patterns("build"))
    verdicts = _judge_all(f"exec:{folder}", ["formulas/rank4_nchw_train", "momentum/decay_0.9_bessel_3steps",
                                             "degenerate/n0_rank2_train"])
    assert [v.status for v in verdicts] == ["pass"] * 3 and (folder / "build" / "bn").exists()
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken, ignore=shutil.ignore_patterns("build"))
    (broken / "bn.c").write_text("int main(void) { return syntax error; }\n")
    verdict = _judge_all(f"exec:{broken}", ["formulas/rank2_nc_train"])[0]
    assert verdict.status == "error" and "build failed (cc -std=c99" in verdict.detail and "error" in verdict.detail


def test_a_backend_without_running_state_says_so_in_its_handshake():
    """keeps_state: false makes the judge run it step by step (bnconform.judging.stepwise); absent: true."""
    assert parse_handshake(json.loads(json.dumps(EVERYTHING)), "fake").keeps_state is True
    assert parse_handshake({**json.loads(json.dumps(EVERYTHING)), "keeps_state": False}, "fake").keeps_state is False


def test_a_shipped_backend_with_a_setup_runs_from_a_user_cache_copy(tmp_path, monkeypatch):
    """Inside an installed bnconform (its _data folder), TensorFlow.js' folder is read from a copy in
    the user cache (without node_modules), so `npm ci --prefix` and the node commands never write
    into site-packages; the checkout's own folder is used as it is; a changed shipped file is a new copy."""
    from bnconform.adapters import exec_manifest

    shipped = tmp_path / "site-packages" / "bnconform" / "_data"
    shutil.copytree(ROOT / "backends" / "tfjs", shipped / "backends" / "tfjs",
                    ignore=shutil.ignore_patterns("node_modules"))
    monkeypatch.setattr(exec_manifest, "SHIPPED", shipped)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    before = sorted(p.relative_to(shipped) for p in shipped.rglob("*"))

    rows = exec_manifest.read_manifest(str(shipped / "backends" / "tfjs"))
    folder = rows[0].folder
    assert folder.parent.parent == tmp_path / "cache" / "bnconform" / "backends" and folder.name == "tfjs"
    assert (folder / "backend.js").read_bytes() == (ROOT / "backends" / "tfjs" / "backend.js").read_bytes()
    assert not (folder / "node_modules").exists()
    assert rows[0].setup[rows[0].setup.index("--prefix") + 1] == str(folder)
    assert exec_manifest.read_manifest(str(shipped / "backends" / "tfjs"))[0].folder == folder
    assert sorted(p.relative_to(shipped) for p in shipped.rglob("*")) == before

    (shipped / "backends" / "tfjs" / "backend.js").write_text("// a newer backend\n")
    assert exec_manifest.read_manifest(str(shipped / "backends" / "tfjs"))[0].folder != folder
    assert exec_manifest.read_manifest(str(ROOT / "backends" / "tfjs"))[0].folder == ROOT / "backends" / "tfjs"
