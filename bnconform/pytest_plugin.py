"""pytest plugin (entry point ``pytest11``): the conformance matrix as one test per cell.

``pytest -n auto`` in a checkout runs the unit tests plus every (case, backend, device) cell,
with ids like ``momentum/decay_0.9_bessel_3steps[torch.nn-cpu]``. Each backend runs in its own
worker process (see bnconform.pool), grouped onto one xdist worker via ``xdist_group`` so it is
imported once. Verdicts travel to the controller in ``user_properties``; the controller writes
reports/results.json and reports/conformance.md at the end. pass -> passed; deviation -> xfail;
unsupported/unavailable -> skipped with the reason; fail/error -> failed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .verdict import Verdict

_VERDICTS = pytest.StashKey[list]()
_POOL = pytest.StashKey[object]()
_PROPERTY = "bnconform_verdict"


def pytest_addoption(parser):
    group = parser.getgroup("bnconform", "Batch Normalization conformance matrix")
    group.addoption("--bn-backend", action="append", default=[], help="backend name (repeatable; default: all)")
    group.addoption("--bn-adapter", action="append", default=[], help="ad hoc adapter package.module:ClassName")
    group.addoption("--bn-device", action="append", default=[], help="device kind: cpu, cuda, ... (repeatable)")
    group.addoption("--bn-family", action="append", default=[], help="case family (repeatable; default: all)")
    group.addoption("--bn-cases", default=None, help="case directory (default: <rootdir>/cases)")
    group.addoption("--bn-reports", default=None, help="report directory (default: <rootdir>/reports)")
    group.addoption("--bn-timeout", type=float, default=120.0, help="seconds per cell before the backend is killed")
    group.addoption("--bn-matrix", choices=("auto", "yes", "no"), default="auto",
                    help="collect the matrix: auto = when pytest runs with no explicit paths")


def pytest_configure(config):
    config.stash[_VERDICTS] = []
    config.pluginmanager.register(_VerdictCollector(config.stash[_VERDICTS]), "bnconform-verdicts")
    if not hasattr(config, "workerinput") and _wants_matrix(config):
        _cells(config)  # a bad --bn-* option fails here, once, before any xdist worker starts
    # One xdist worker per backend group imports each framework once.
    if getattr(config.option, "dist", "no") == "load":
        config.option.dist = "loadgroup"


def _wants_matrix(config) -> bool:
    choice = config.getoption("--bn-matrix")
    if choice != "auto":
        return choice == "yes"
    explicit = [a for a in config.invocation_params.args if not str(a).startswith("-") and Path(str(a)).exists()]
    selected = config.getoption("--bn-backend") or config.getoption("--bn-family") or config.getoption("--bn-adapter")
    return not explicit or bool(selected)


class ConformanceFailure(Exception):
    """A failed or errored cell; the message is the verdict's one line."""


class CellItem(pytest.Item):
    """One (case, backend, device) cell."""

    def __init__(self, *, cell, **kwargs):
        super().__init__(**kwargs)
        self.cell = cell
        self.add_marker(pytest.mark.xdist_group(cell.adapter))

    def runtest(self):
        pool = _pool(self.config)
        verdict = pool.get(self.cell.adapter).verdict(self.cell.case_path, self.cell.case_id,
                                                      self.cell.family, self.cell.device)
        self.user_properties.append((_PROPERTY, json.dumps(verdict.to_json())))
        tag = f"[{self.cell.adapter} {self.cell.device}: {self.cell.case_id}]"
        if verdict.status == "deviation":
            pytest.xfail(f"declared deviation {', '.join(verdict.deviations)} ({', '.join(verdict.kinds)}): {verdict.detail}")
        if verdict.status in ("unsupported", "unavailable"):
            pytest.skip(f"{verdict.status}: {verdict.detail}")
        if verdict.status in ("fail", "error"):
            raise ConformanceFailure(f"{verdict.status}: {verdict.detail} {tag}")

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, ConformanceFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.cell.case_path, None, self.cell.cell_id


def _pool(config):
    from .pool import Pool

    if _POOL not in config.stash:
        config.stash[_POOL] = Pool(config.getoption("--bn-timeout"))
    return config.stash[_POOL]


def _cells(config):
    from .adapters.registry import RegistryError
    from .matrix import discover_cases, plan, select_adapters
    from .validation import CaseError

    root = Path(config.getoption("--bn-cases") or Path(config.rootpath) / "cases")
    try:
        cases = discover_cases(root, config.getoption("--bn-family") or None)
        adapters = select_adapters(config.getoption("--bn-backend"), config.getoption("--bn-adapter"))
    except (CaseError, RegistryError) as exc:
        raise pytest.UsageError(str(exc)) from None
    return plan(cases, adapters, config.getoption("--bn-device") or None)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
    if not _wants_matrix(config):
        return
    items.extend(CellItem.from_parent(session, name=cell.cell_id, cell=cell) for cell in _cells(config))


class _VerdictCollector:
    """Receives every test report (from xdist workers too) and keeps the cell verdicts."""

    def __init__(self, sink: list):
        self.sink = sink

    def pytest_runtest_logreport(self, report):
        if report.when != "call":  # setup/teardown reports carry the same properties
            return
        for name, value in getattr(report, "user_properties", ()):
            if name == _PROPERTY:
                self.sink.append(json.loads(value))


def pytest_sessionfinish(session):
    config = session.config
    if _POOL in config.stash:
        config.stash[_POOL].close()
    if hasattr(config, "workerinput") or not config.stash[_VERDICTS]:
        return  # xdist workers report through the controller
    from . import results
    from .report import render

    verdicts = [Verdict.from_json(v) for v in config.stash[_VERDICTS]]
    out = Path(config.getoption("--bn-reports") or Path(config.rootpath) / "reports")
    cases = Path(config.getoption("--bn-cases") or Path(config.rootpath) / "cases")
    document = results.build(verdicts, {}, {"via": "pytest"}, cases)
    results.write(document, out / "results.json")
    (out / "conformance.md").write_text(render(document), encoding="utf-8")
    config.stash[_VERDICTS] = []
