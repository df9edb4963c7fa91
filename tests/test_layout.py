"""The package layout is the pipeline, and imports point one way along it.

Each stage of ``bnconform/`` is a package whose docstring opens with "Stage N" (its place in
STAGES below). A module may import its own stage and the stages before it, never a later one,
and no two modules may import each other, directly or around a circle: imports inside functions
count too (a lazy import that breaks a circle at run time still ties the two modules together).
Read from the source with ``ast``; nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "bnconform"
# The pipeline, in the order a stage may import: each may use those before it.
STAGES = ("caseformat", "reference", "judging", "specs", "adapters", "execution", "reporting", "interfaces")
ENTRY_MODULES = {"bnconform": -1, "bnconform.__main__": len(STAGES) - 1}  # the root imports no stage


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _stage(module: str) -> int:
    if module in ENTRY_MODULES:
        return ENTRY_MODULES[module]
    return STAGES.index(module.split(".")[1])


def _imported(module: str, path: Path) -> set[str]:
    """Every bnconform module ``module`` imports, at any depth of its source."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
    return {_owning_module(name) for name in found if name.split(".")[0] == "bnconform"} - {module}


def _owning_module(name: str) -> str:
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


GRAPH = {module: _imported(module, path) for module, path in MODULES.items()}


def test_every_module_lives_in_a_stage_package():
    top_level = [m for m in MODULES if m.count(".") == 1 and m.split(".")[1] not in STAGES]
    assert len([m for m in top_level if m not in ENTRY_MODULES]) <= 10
    strays = [m for m in top_level if m not in ENTRY_MODULES]
    assert not strays, f"Expected: every module inside one of the stage packages {STAGES}. Received: {strays}"


def test_each_stage_docstring_states_its_place_in_the_pipeline():
    for number, stage in enumerate(STAGES, start=1):
        doc = ast.get_docstring(ast.parse((PACKAGE / stage / "__init__.py").read_text(encoding="utf-8"))) or ""
        assert doc.startswith(f"Stage {number}, "), (
            f"bnconform/{stage}/__init__.py: Expected: a docstring opening 'Stage {number}, ' (its place in "
            f"STAGES). Received: {doc[:40]!r}")
        assert "May import" in doc, f"bnconform/{stage}/__init__.py: Expected: a 'May import' line. Received: none"


def test_no_module_imports_a_later_stage():
    upward = sorted(f"{m} (stage {STAGES[_stage(m)] if _stage(m) >= 0 else 'root'}) imports {t} "
                    f"(stage {STAGES[_stage(t)]})" for m, targets in GRAPH.items() for t in targets
                    if _stage(t) > _stage(m))
    assert not upward, "Expected: imports only of the same or an earlier stage. Received:\n" + "\n".join(upward)


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_circle():
    circles = _circles(GRAPH)
    assert not circles, "Expected: no module importing itself around a circle. Received:\n" + "\n".join(
        " <-> ".join(c) for c in circles)


def test_the_circle_finder_finds_a_circle():
    """The check above can fail: a three-module circle and a self-contained chain."""
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []


_OLD_PATHS = """
import importlib, json, sys, warnings
import bnconform
seen = {}
for old, new in bnconform.MOVED_MODULES.items():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(f"bnconform.{old}")
    seen[old] = [new, module is importlib.import_module(f"bnconform.{new}"), module.__spec__.name,
                 [str(w.message) for w in caught if w.category is DeprecationWarning]]
print(json.dumps(seen))
"""


def test_module_paths_from_before_the_stage_packages_still_import_with_a_warning():
    """``import bnconform.model`` (a plug-in written before the move) gives the module itself,
    whose spec still names its real place, and warns once where it went; in a fresh interpreter,
    so no earlier import has cached the old names."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _OLD_PATHS], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    for old, (new, same, spec_name, warned) in json.loads(done.stdout).items():
        assert same, f"bnconform.{old}: Expected: the module at its new place. Received: another module object"
        assert spec_name == f"bnconform.{new}", f"bnconform.{old}: Expected: __spec__ bnconform.{new}. Received: {spec_name}"
        assert any(f"bnconform.{old} moved to bnconform." in w for w in warned), (
            f"bnconform.{old}: Expected: a DeprecationWarning naming the new place. Received: {warned}")
