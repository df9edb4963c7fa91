"""cases/ is exactly what the specs generate, generation is deterministic, and coverage holds."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from bnconform.interfaces import cli
from bnconform.reference import oracle
from bnconform.adapters.base import variant
from bnconform.caseformat.casefile import dumps_case
from bnconform.judging.compare import compare_case
from bnconform.specs import FAMILIES, all_specs, build
from bnconform.caseformat.validation import load_case

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "cases"
MINIMUM_PER_FAMILY = {"formulas": 40, "epsilon": 15, "momentum": 25, "degenerate": 20}
MIRRORED = ("formulas", "epsilon", "momentum", "degenerate", "gradients", "replicas")
# families whose zero-debiased twins exist for the always-zero-debias frameworks (biased only)
ZERO_DEBIAS_ONLY_VARIANCE = ("degenerate", "gradients", "replicas")
OTHER_KIND = {"bessel": "biased", "biased": "bessel"}


def generate_check(cases: Path, capsys) -> SimpleNamespace:
    """``bnconform generate --check --cases CASES`` in this process (an exception fails the test)."""
    capsys.readouterr()
    code = cli.main(["generate", "--check", "--cases", str(cases)])
    out, err = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out, stderr=err)


def case_files() -> list[Path]:
    return sorted(p for p in CASES.rglob("*.json") if p.name != "schema.json")


def test_check_passes_on_the_repository_cases(capsys):
    result = generate_check(CASES, capsys)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_check_names_every_edited_deleted_and_stale_file(tmp_path, capsys):
    copy = tmp_path / "cases"
    shutil.copytree(CASES, copy)
    edited = copy / "formulas" / "rank2_nc_train.json"
    edited.write_text(edited.read_text(encoding="utf-8").replace('"epsilon": 1e-05', '"epsilon": 1e-03'),
                      encoding="utf-8")
    deleted = copy / "momentum" / "decay_0.9_bessel_3steps.json"
    deleted.unlink()
    stale = copy / "degenerate" / "no_longer_a_spec.json"
    stale.write_text("{}", encoding="utf-8")

    result = generate_check(copy, capsys)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    for path, word in ((edited, "differs"), (deleted, "missing"), (stale, "stale")):
        assert any(str(path) in line and word in line for line in lines), (path, result.stderr)
    assert len(lines) == 4 and "3 file(s) differ" in lines[-1]
    assert stale.exists() and not deleted.exists() and "1e-03" in edited.read_text(encoding="utf-8"), \
        "--check must write nothing"


def test_building_a_spec_twice_gives_identical_text():
    specs = all_specs()
    np.random.seed(1)  # a global seed must make no difference: each spec seeds its own generator
    first = [dumps_case(build(spec)) for spec in specs]
    np.random.seed(2)
    second = [dumps_case(build(spec)) for spec in specs]
    assert first == second


def test_family_counts_meet_the_minimums():
    counts = Counter(spec.family for spec in all_specs())
    for family, minimum in MINIMUM_PER_FAMILY.items():
        assert counts[family] >= minimum, f"{family}: Expected: >= {minimum} cases. Received: {counts[family]}"
    assert set(counts) == set(FAMILIES)
    on_disk = Counter(p.parent.name for p in case_files())
    assert on_disk == counts


def test_case_ids_are_unique_and_match_their_paths():
    ids = []
    for path in case_files():
        obj = json.loads(path.read_text(encoding="utf-8"))
        rel = path.relative_to(CASES).with_suffix("")
        assert obj["id"] == rel.as_posix(), f"{path}: Expected: id {rel.as_posix()!r}. Received: {obj['id']!r}"
        assert obj["family"] == rel.parent.as_posix()
        ids.append(obj["id"])
    assert len(ids) == len(set(ids)) > 0
    assert len({spec.id for spec in all_specs()}) == len(all_specs())


def _twin_key(case, variance: str) -> tuple:
    """What a twin in ``variance`` must share: family, every other knob, the step program, each
    step's N (the Bessel factor's argument) and the initial update count."""
    steps = tuple((s.normalize_with, s.update_running_stats) for s in case.steps)
    return (case.family, case.config.with_running(variance=variance), steps, tuple(case.reduce_counts()),
            case.initial_state.num_updates)


def test_every_case_whose_results_depend_on_the_variance_kind_has_an_other_kind_twin():
    cases = [load_case(p) for p in case_files() if p.parent.name in MIRRORED]
    present = {_twin_key(c, c.config.running_stats.variance) for c in cases}
    dependent = []
    for case in cases:
        if case.config.running_stats.zero_debias and case.family in ZERO_DEBIAS_ONLY_VARIANCE:
            continue  # a twin for the always-zero-debias frameworks, which keep one kind only
        if "sample_weights" in case.extensions:
            continue  # weighted moments have no Bessel variance (validation rejects the twin)
        other = OTHER_KIND[case.config.running_stats.variance]
        mismatches, _ = compare_case(case, oracle.run_case(variant(case, running_stats={"variance": other})))
        if mismatches:  # a framework fixed to the other kind cannot run this case
            dependent.append(case.id)
            assert _twin_key(case, other) in present, \
                f"{case.id}: Expected: a twin case with a {other} running variance. Received: none"
    assert len(dependent) > len(cases) // 2, dependent  # train steps update running_var in most cases


def test_generated_twins_share_their_originals_inputs_and_differ_only_in_the_kind():
    by_id = {spec.id: spec for spec in all_specs(MIRRORED)}
    twins = [spec for spec in by_id.values() if spec.seed_id]
    assert twins
    for spec in twins:
        twin, original = build(spec), build(by_id[spec.seed_id])
        ours, theirs = twin.config.running_stats, original.config.running_stats
        assert (ours.variance, ours.zero_debias) != (theirs.variance, theirs.zero_debias), spec.id
        assert twin.config.with_running(variance=theirs.variance, zero_debias=theirs.zero_debias) == original.config
        assert ours.variance == theirs.variance or ours.variance == OTHER_KIND[theirs.variance]
        for a, b in zip(twin.steps, original.steps):
            assert a.x.tobytes() == b.x.tobytes() and a.x.shape == b.x.shape, spec.id
        assert twin.initial_state.running_var.tobytes() == original.initial_state.running_var.tobytes()
        assert "twin of " in twin.description and "off by up to" in twin.description
