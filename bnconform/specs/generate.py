"""Rebuild cases/ from the case specs; ``check`` lists every file that differs from the code."""

from __future__ import annotations

from pathlib import Path

from ..caseformat.casefile import dumps_case
from ..caseformat.validation import SCHEMA_PATH
from . import FAMILIES, all_specs, build


def expected_files(families=FAMILIES) -> dict[str, str]:
    """Relative path -> exact text, for every case the specs produce (plus the schema)."""
    files = {"schema.json": SCHEMA_PATH.read_text(encoding="utf-8")}
    for spec in all_specs(families):
        files[f"{spec.family}/{spec.name}.json"] = dumps_case(build(spec))
    return files


def _existing(root: Path, families) -> set[str]:
    found = {str(p.relative_to(root)) for f in families for p in (root / f).glob("*.json")}
    return found | ({"schema.json"} if (root / "schema.json").exists() else set())


def generate(root: Path, families=FAMILIES) -> int:
    """Write every case under ``root`` and delete stale files of these families; returns count."""
    files = expected_files(families)
    for stale in _existing(root, families) - files.keys():
        (root / stale).unlink()
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
    return len(files) - 1


def check(root: Path, families=FAMILIES) -> list[str]:
    """One line per file that is missing, stale, or differs from what the code produces."""
    files = expected_files(families)
    problems = [f"{root / rel}: not produced by the case specs (stale file)"
                for rel in sorted(_existing(root, families) - files.keys())]
    for rel, text in sorted(files.items()):
        path = root / rel
        if not path.exists():
            problems.append(f"{path}: missing (run `bnconform generate`)")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{path}: differs from what the specs generate (run `bnconform generate`)")
    return problems
