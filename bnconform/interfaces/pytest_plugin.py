"""pytest plugin (entry point ``pytest11``): every case file is a test file, every backend x
device a test in it.

``pytest -n auto`` in a checkout collects ``tests/`` and ``cases/`` (both in ``testpaths``);
a case file ``cases/momentum/x.json`` yields items ``cases/momentum/x.json::torch.nn-cpu``, so
``pytest cases/momentum``, ``pytest cases/momentum/x.json`` and ``-k torch`` select as usual.
Cells the controller can decide alone (unavailable, unsupported: bnconform.execution.plan)
report their skip directly, without a host process or a setup/call/teardown cycle; the rest run in host processes shared by
adapters of one package and environment, each host's items kept on one xdist worker
(``xdist_group``) so each framework is imported once there; unit-test modules marked
``xdist_group(name)`` (those that import a framework in-process) likewise run on one worker per
name. Verdicts travel to the controller
in ``user_properties``; at the end it writes the reports through bnconform.reporting.writing (the whole
registered matrix replaces reports/, a partial selection goes to reports/partial/<slug>/).
pass -> passed; deviation -> xfail naming the deviations and kinds; unsupported/unavailable ->
skipped with the reason; fail/error -> failed with the verdict's one line.
"""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path

import pytest

_VERDICTS = pytest.StashKey[dict]()
_HOSTS = pytest.StashKey[object]()
_SELECTION = pytest.StashKey[dict]()
_WRITTEN = pytest.StashKey[str]()  # the line about the reports: where they went, or why they did not
_SECONDS = pytest.StashKey[dict]()  # adapter -> seconds per run cell in the last results.json
_CASE_META = pytest.StashKey[object]()  # results.CaseMetaInAdvance, started at the first verdict
_INFOS = pytest.StashKey[dict]()  # adapter -> its host's info (version, devices, defaults), as `run` records
_INFORMED = pytest.StashKey[set]()  # (in each process that runs cells) adapters whose info was reported
_PROPERTY = "bnconform_verdict"
_INFO_PROPERTY = "bnconform_adapter_info"


def pytest_addoption(parser):
    group = parser.getgroup("bnconform", "Batch Normalization conformance matrix")
    group.addoption("--bn-backend", action="append", default=[],
                    help="backend name, family (torch) or glob ('keras3.*'); repeatable; default: all")
    group.addoption("--bn-adapter", action="append", default=[], help="ad hoc adapter package.module:ClassName")
    group.addoption("--bn-device", action="append", default=[], help="device kind: cpu, cuda, ... (repeatable)")
    group.addoption("--bn-family", action="append", default=[], help="case family (repeatable; default: all)")
    group.addoption("--bn-cases", default=None,
                    help="case directory (default: <rootdir>/cases, else the vectors shipped with bnconform)")
    group.addoption("--bn-reports", default=None,
                    help="write this run's reports into this directory, as `bnconform run --out` does (default: "
                         "reports/ for the whole matrix, else reports/partial/<selection>/)")
    group.addoption("--bn-timeout", type=float, default=120.0, help="seconds per cell before its host is killed")
    group.addoption("--bn-stepwise", action="store_true",
                    help="run each step from the state the case expects before it, as `bnconform run --stepwise`")


def pytest_configure(config):
    config.stash[_VERDICTS], config.stash[_INFOS] = {}, {}
    # The plugin marks cells with xdist's group; without pytest-xdist the mark is still known
    config.addinivalue_line("markers", "xdist_group(name): run these tests on one xdist worker")
    config.pluginmanager.register(_VerdictCollector(config), "bnconform-verdicts")
    if not hasattr(config, "workerinput"):
        _selection(config)  # a bad --bn-* option fails here, once, before any xdist worker starts
    _collect_shipped_cases(config)  # xdist workers parse the command line again: they decide alike
    # Items of one host stay on one xdist worker, so each framework is imported once; the groups
    # are scheduled in the order pytest_collection_modifyitems gives (longest first), not by
    # xdist's item count, which would put thousands of instant skips before the long hosts.
    if getattr(config.option, "dist", "no") == "load":
        config.option.dist = "loadgroup"
        config.option.loadscopereorder = False
    if getattr(config, "workerinput", {}).get("bnconform_loadgroup"):
        # A worker decides whether to tag node ids with their group from its own command line,
        # where `-n auto` alone still reads dist=no; the controller says what it really uses.
        config.option.loadgroup = True


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """(xdist, on the controller) tell each worker that groups are scheduled together, and each
    adapter's seconds per cell in the last results.json (the order of the groups)."""
    node.workerinput["bnconform_loadgroup"] = node.config.getoption("dist", "no") == "loadgroup"
    if _SECONDS not in node.config.stash:  # read once here, not in every worker
        results = _default_reports(node.config) / "results.json"
        node.config.stash[_SECONDS] = _seconds_per_cell(results)
    node.workerinput["bnconform_seconds_per_cell"] = node.config.stash[_SECONDS]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """(xdist, on the controller) loadgroup with O(1) pending counts: bnconform.interfaces.xdist_scheduling."""
    if config.getoption("dist", "no") != "loadgroup":
        return None
    from .xdist_scheduling import CountingLoadGroupScheduling

    return CountingLoadGroupScheduling(config, log)


def _selection(config) -> dict:
    """The case root, the selected backends and device kinds and the families (checked once)."""
    if _SELECTION not in config.stash:
        from ..adapters.registry import RegistryError
        from ..execution.plan import unknown_families
        from ..execution.selection import select_backends, select_devices

        root = Path(config.getoption("--bn-cases") or _default_case_root(config)).resolve()
        if config.getoption("--bn-cases") and not root.is_dir():
            raise pytest.UsageError(f"--bn-cases: Expected: a directory of case families. Received: {root}")
        families, unknown = unknown_families(root, config.getoption("--bn-family"))
        if unknown:
            raise pytest.UsageError(f"--bn-family: Expected: one of {', '.join(families)} under {root}. "
                                    f"Received: {', '.join(unknown)}")
        try:
            names = select_backends(config.getoption("--bn-backend"), config.getoption("--bn-adapter"))
            devices = select_devices(config.getoption("--bn-device"), names)
        except RegistryError as exc:
            raise pytest.UsageError(str(exc)) from None
        config.stash[_SELECTION] = {"root": root, "names": names, "devices": devices, "all_families": families,
                                    "families": config.getoption("--bn-family")}
    return config.stash[_SELECTION]


def _default_case_root(config) -> Path:
    """<rootdir>/cases; else <invocation dir>/cases; else the vectors shipped with bnconform. A
    ``cases/`` folder counts only if it holds case files (shipped_data.holds_cases): a project's
    own unrelated ``cases/`` of JSON is never collected as vectors. pytest takes the value of an
    option given as `--bn-reports DIR` (DIR existing) for a path argument when it picks the
    rootdir, which then lands in DIR without the project's configfile; the checkout's cases must
    still be found."""
    from ..caseformat.shipped_data import holds_cases, shipped_cases

    for base in (Path(config.rootpath), Path(config.invocation_params.dir)):
        if holds_cases(base / "cases"):
            return base / "cases"
    return shipped_cases()


def _default_reports(config) -> Path:
    """reports/ beside a checkout's (or project's) cases/, else in the invocation directory (never
    beside the shipped vectors, inside the installed package)."""
    from ..caseformat.shipped_data import shipped_cases

    root = _default_case_root(config)
    if root.resolve() == shipped_cases().resolve():
        return Path(config.invocation_params.dir) / "reports"
    return root.parent / "reports"


def _collect_shipped_cases(config) -> None:
    """Where no case directory is at hand (a project that installed bnconform for its own
    adapter), pytest was given no paths and the run asks for bnconform (a --bn-* selection or
    ``-p bnconform``), collect the shipped vectors too, so that `pytest --bn-adapter
    yourpkg:YourBN` runs the matrix instead of collecting nothing. A plain `pytest` in a project
    that merely has bnconform installed collects only its own tests."""
    from ..caseformat.shipped_data import shipped_cases

    root = _selection(config)["root"]
    given_paths = config.args_source == pytest.Config.ArgsSource.ARGS
    if root == shipped_cases().resolve() and not given_paths and root.is_dir() and _asks_for_bnconform(config):
        config.args.append(str(root))


def _asks_for_bnconform(config) -> bool:
    """A --bn-backend, --bn-adapter, --bn-family or --bn-device option, or ``-p bnconform``."""
    if any(config.getoption(f"--bn-{key}") for key in ("backend", "adapter", "family", "device")):
        return True
    args = [str(a) for a in config.invocation_params.args]
    return any(a == "-pbnconform" or (a == "-p" and nxt == "bnconform") for a, nxt in zip(args, [*args[1:], ""]))


def pytest_collect_file(file_path: Path, parent):
    if file_path.suffix != ".json" or file_path.name == "schema.json":
        return None
    selection = _selection(parent.config)
    try:
        family = file_path.resolve().relative_to(selection["root"]).parts[0]
    except ValueError:
        return None  # a JSON file outside the case root is not a case
    if selection["families"] and family not in selection["families"]:
        return None
    return CaseFile.from_parent(parent, path=file_path)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """(xdist workers) The hosts' cells first, longest host first (seconds per cell of each
    adapter in the last full report, read by the controller; one cell counts as 10 ms where that
    report has none), so
    the long groups start at once and unit tests and skips fill the other workers around them."""
    if not getattr(config, "workerinput", {}).get("bnconform_loadgroup"):
        return
    _apply_xdist_group_marks(items)

    def group(item):
        return item.nodeid.rpartition("@")[2] if isinstance(item, CellItem) and item.settled is None else ""
    per_cell = config.workerinput.get("bnconform_seconds_per_cell", {})
    cost = collections.Counter()
    for item in items:
        if group(item):
            cost[group(item)] += per_cell.get(item.cell.adapter, 0.01)
    order = {item.nodeid: n for n, item in enumerate(items)}
    items.sort(key=lambda item: (0, -cost[group(item)], group(item), order[item.nodeid]) if group(item)
               else (1, 0, "", order[item.nodeid]))


def _seconds_per_cell(results_path: Path) -> dict[str, float]:
    """Mean seconds of a run cell per adapter in a results.json ({} if there is none)."""
    try:
        verdicts = json.loads(results_path.read_text())["verdicts"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    seconds, cells = collections.Counter(), collections.Counter()
    for verdict in verdicts:
        if verdict.get("status") not in ("unsupported", "unavailable"):
            seconds[verdict["adapter"]] += verdict.get("seconds") or 0.0
            cells[verdict["adapter"]] += 1
    return {name: seconds[name] / cells[name] for name in cells}


def _apply_xdist_group_marks(items) -> None:
    """Give every item marked ``xdist_group(name)`` (a unit-test module that imports a framework
    in-process) the "@name" node-id suffix that loadgroup schedules by, so the whole module runs
    on one worker and the framework is imported once. xdist writes the suffix into the legacy
    ``_nodeid``, which pytest >= 9 no longer reads (pytest-dev/pytest-xdist#1386): the mark was
    silently ignored. Where xdist's own suffix took effect (pytest < 9), the id is left alone.

    An unmarked test is grouped by its module ("@test_cli"): loadgroup makes every ungrouped test
    a scope of its own, and xdist's scheduler walks all of a worker's scopes after each test
    (~1,000 unit-test scopes x 19,000 tests: ~10 s of the controller's CPU)."""
    for item in items:
        if isinstance(item, CellItem):
            continue
        names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                        for m in item.iter_markers("xdist_group")}) or [Path(item.nodeid.split("::")[0]).stem]
        suffix = "@" + "_".join(names)
        if not item.nodeid.endswith(suffix) and hasattr(item, "_id"):
            from _pytest.nodeid import coerce_node_id  # pytest >= 9: the structured id

            item._id = coerce_node_id(item.nodeid + suffix)


class InvalidCase(Exception):
    """A case file that does not validate; the message is the validator's one line."""


class CaseFile(pytest.File):
    """One case file: an item per selected backend x device kind."""

    def collect(self):
        from ..caseformat.validation import CaseError
        from ..execution.case_cache import load_case
        from ..execution.plan import Cell, planned_kinds

        try:
            case = load_case(self.path)
        except CaseError as exc:
            raise InvalidCase(str(exc)) from None
        selection = _selection(self.config)
        for name in selection["names"]:
            for device in planned_kinds(name, selection["devices"]):
                yield self._item(Cell(str(self.path), case.id, case.family, name, device,
                                      bool(self.config.getoption("--bn-stepwise"))), case)

    def _item(self, cell, case):
        """The cell's item: presettled cells carry their verdict and spread freely; the others
        are tagged with their host's group so that one xdist worker runs each host."""
        from ..execution.plan import host_key, presettle

        name, settled = f"{cell.adapter}-{cell.device}", presettle(cell, case)
        grouped = getattr(self.config, "workerinput", {}).get("bnconform_loadgroup")
        if settled is not None:  # grouped by family only to spare xdist's scheduler thousands of scopes
            nodeid = f"{self.nodeid}::{name}@settled-{cell.family}" if grouped else None
            return CellItem.from_parent(self, name=name, cell=cell, settled=settled, nodeid=nodeid)
        group = re.sub(r"[^\w.]+", "-", host_key(cell.adapter)).strip("-")
        if not grouped:
            item = CellItem.from_parent(self, name=name, cell=cell, settled=None)
            item.add_marker(pytest.mark.xdist_group(group))
            return item
        # xdist reads the group from a "@group" suffix of the node id. Its own hook writes that
        # suffix where pytest < 9 kept the id (pytest 9 ignores it), so the plugin writes it.
        return CellItem.from_parent(self, name=name, cell=cell, settled=None, nodeid=f"{self.nodeid}::{name}@{group}")

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, InvalidCase):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)


class ConformanceFailure(Exception):
    """A failed or errored cell; the message is the verdict's one line."""


class CellItem(pytest.Item):
    """One (case, backend, device) cell. A presettled cell carries its verdict from collection."""

    def __init__(self, *, cell, settled, **kwargs):
        super().__init__(**kwargs)
        self.cell, self.settled = cell, settled
        if settled is not None:
            self.user_properties.append((_PROPERTY, json.dumps(settled.to_json())))

    def setup(self):
        if self.settled is not None:
            pytest.skip(f"{self.settled.status}: {self.settled.detail}")

    def runtest(self):
        host = _hosts(self.config).for_adapter(self.cell.adapter)
        verdict = host.verdict(self.cell)
        self.user_properties.append((_PROPERTY, json.dumps(verdict.to_json())))
        informed = self.config.stash.setdefault(_INFORMED, set())
        if self.cell.adapter not in informed:  # the host's info is the same for every cell: sent once
            informed.add(self.cell.adapter)
            self.user_properties.append((_INFO_PROPERTY, json.dumps({self.cell.adapter: host.info(self.cell.adapter)})))
        if verdict.status == "deviation":
            pytest.xfail(f"declared deviation {', '.join(verdict.deviations)} ({', '.join(verdict.kinds)}): {verdict.detail}")
        if verdict.status in ("unsupported", "unavailable"):
            pytest.skip(f"{verdict.status}: {verdict.detail}")
        if verdict.status in ("fail", "error"):
            raise ConformanceFailure(f"{verdict.status}: {verdict.detail} [{self.cell.cell_id}]")

    def repr_failure(self, excinfo, style=None):
        # The verdict's line says it all; pytest would otherwise also format a traceback for
        # every xfail (parsing each frame's source: ~0.1 s per declared deviation).
        if isinstance(excinfo.value, (ConformanceFailure, pytest.xfail.Exception)):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, self.cell.cell_id


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    """A presettled cell reports its skip directly: one setup report, no exception, no call or
    teardown phase (pytest's full protocol costs ~1.5 ms per item with xdist, and most of the
    matrix is settled). The collectors of the item before it are torn down as pytest would."""
    if not isinstance(item, CellItem) or item.settled is None:
        return None
    from _pytest.reports import TestReport

    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    item.session._setupstate.teardown_exact(nextitem)
    reason = f"Skipped: {item.settled.status}: {item.settled.detail}"
    report = TestReport(item.nodeid, item.location, {}, "skipped", (str(item.path), None, reason), "setup",
                        user_properties=item.user_properties)
    item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def _hosts(config):
    from ..execution.controller import Hosts

    if _HOSTS not in config.stash:
        config.stash[_HOSTS] = Hosts(config.getoption("--bn-timeout"))
    return config.stash[_HOSTS]


class _VerdictCollector:
    """Receives every test report (from xdist workers too) and keeps one verdict per cell; at the
    controller's first verdict it starts prefetching the cases' report metadata in the background."""

    def __init__(self, config):
        self.config, self.sink = config, config.stash[_VERDICTS]

    def pytest_runtest_logreport(self, report):
        for name, value in getattr(report, "user_properties", ()):
            if name == _INFO_PROPERTY:
                self.config.stash[_INFOS].update(json.loads(value))
            if name == _PROPERTY:
                self.sink[report.nodeid.split("@")[0]] = json.loads(value)
                if _CASE_META not in self.config.stash and not hasattr(self.config, "workerinput"):
                    self.config.stash[_CASE_META] = _prefetch_case_meta(self.config)


def _prefetch_case_meta(config):
    from ..execution.plan import case_files
    from ..reporting.results import CaseMetaInAdvance

    selection = _selection(config)
    return CaseMetaInAdvance(selection["root"], case_files(selection["root"], selection["families"]))


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session):
    """(controller) Write the reports. Every verdict has arrived once the session finishes, so this
    runs before xdist's own sessionfinish, which waits for the workers to exit (each closing its
    host processes, ~2-4 s): the two overlap instead of adding up."""
    config = session.config
    if hasattr(config, "workerinput") or not config.stash[_VERDICTS]:
        return  # xdist workers report through the controller
    from ..reporting.writing import ReportsNotWritten

    try:
        config.stash[_WRITTEN] = f"reports written to {_write_reports(config, list(config.stash[_VERDICTS].values()))}"
    except ReportsNotWritten as exc:  # the tests' own outcomes stand; the line says what is missing
        config.stash[_WRITTEN] = f"reports not written: {exc}"
    config.stash[_VERDICTS].clear()


def pytest_terminal_summary(terminalreporter, config):
    if _WRITTEN in config.stash:
        terminalreporter.write_line(f"bnconform: {config.stash[_WRITTEN]}")


def _write_reports(config, verdict_dicts) -> Path:
    from ..judging.verdict import Verdict
    from ..reporting import results
    from ..reporting.writing import write_reports

    selection = _selection(config)
    verdicts = [Verdict.from_json(v) for v in verdict_dicts]
    options = {k: config.getoption(f"--bn-{k}") for k in ("backend", "adapter", "device", "family", "stepwise")}
    document = results.build(verdicts, config.stash[_INFOS], {k: v for k, v in options.items() if v},
                             selection["root"], config.stash.get(_CASE_META, None))
    return write_reports(document, _default_reports(config), _whole_matrix(config, verdicts),
                         config.getoption("--bn-reports"))


def _whole_matrix(config, verdicts) -> bool:
    """Every registered backend on every device present, over every case file under the default
    case root, and no cell deselected (paths, -k): only then may reports/ be replaced."""
    from ..execution.plan import case_files, planned_kinds
    from ..execution.selection import is_whole_matrix

    selection = _selection(config)
    if selection["root"] != _default_case_root(config).resolve() or config.getoption("--bn-stepwise"):
        return False
    if not is_whole_matrix(selection["names"], selection["families"], selection["devices"], selection["all_families"]):
        return False
    per_case = sum(len(planned_kinds(n, selection["devices"])) for n in selection["names"])
    cells = {(v.case, v.adapter, v.device) for v in verdicts}
    return len(cells) == per_case * len(case_files(selection["root"]))


def pytest_unconfigure(config):
    if _HOSTS in config.stash:
        config.stash[_HOSTS].close()
