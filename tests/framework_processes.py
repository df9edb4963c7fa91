"""Framework tests run in a process that has their framework host's environment, whatever the order.

Some settings are read once per process, when a framework is first imported: Keras 3's
KERAS_BACKEND, JAX's 64-bit mode and host device count, TensorFlow's logical CPUs, the thread
counts torch and paddle fix at start. A test module marked with :func:`in_framework_process`
therefore never runs in the pytest process that collected it. At the first such test of a name
("tensorflow", "jax", ...), every selected test of that name runs in one child pytest started with
the environment the matrix gives that framework's host (the environment of the adapter named in
PROCESS_ADAPTERS, through bnconform.execution.controller.host_environment), and each test's own
reports are replaced by the child's. No order of tests, and no assignment to xdist workers, can
then change what a framework sees at import; the xdist group in the mark keeps a name's tests on
one worker, so each child starts once per run.

The child gets pytest-randomly's seed when the parent has one, so a random order stays
reproducible. To debug a test in-process (``--pdb``), make the process the child yourself:
``BNCONFORM_FRAMEWORK_PROCESS=tensorflow pytest tests/test_tf_adapters.py --pdb``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

CHILD = "BNCONFORM_FRAMEWORK_PROCESS"  # set in a child: the name whose tests it runs in-process
REPORTS = "BNCONFORM_FRAMEWORK_REPORTS"  # set in a child: where it writes its test reports
# name -> the registered adapter whose host environment the child gets
PROCESS_ADAPTERS = {"tensorflow": "tf.nn", "jax": "flax.linen", "torch": "torch.nn", "paddle": "paddle.nn",
                    "tinygrad": "tinygrad.nn", "mlx": "mlx.nn"}
CHILD_TIMEOUT = 1800.0  # seconds for all of one name's tests
# Frameworks that fix process-wide settings at import: an unmarked test that imports one fails
GUARDED = ("tensorflow", "tf_keras", "keras", "jax", "torch", "paddle", "tinygrad", "mlx")
# Plugins with no part in these tests (hypothesis runs without its pytest plugin): ~0.7 s of imports per child
UNRELATED_PLUGINS = ("-p", "no:jaxtyping", "-p", "no:anyio", "-p", "no:hypothesispytest")
_RESULTS = pytest.StashKey[dict]()


class _Marks(list):
    """Marks usable both as a module's ``pytestmark`` and as a decorator of one test."""

    def __call__(self, test):
        for mark in self:
            test = mark(test)
        return test


def in_framework_process(name: str) -> _Marks:
    """The marks of a test that imports framework ``name``: its child process and its xdist group."""
    if name not in PROCESS_ADAPTERS:
        raise ValueError(f"framework process: Expected: one of {sorted(PROCESS_ADAPTERS)}. Received: {name!r}")
    return _Marks([pytest.mark.framework_process(name), pytest.mark.xdist_group(name)])


def environment_of(name: str) -> dict[str, str]:
    """The environment of the matrix's host for the adapter PROCESS_ADAPTERS names."""
    from bnconform.adapters.registry import resolve
    from bnconform.execution.controller import host_environment

    return host_environment(dict(resolve(PROCESS_ADAPTERS[name]).environment))


def process_name(item) -> str | None:
    mark = item.get_closest_marker("framework_process")
    return mark.args[0] if mark is not None else None


class FrameworkProcesses:
    """The plugin (registered by conftest): replays child reports in the parent, records them in a child."""

    def __init__(self, config):
        self.config = config
        self.reports = os.environ.pop(REPORTS, None)  # popped: a pytest this child starts must not write there
        config.addinivalue_line("markers", "framework_process(name): run in a child process with the "
                                           "environment of framework name's host (tests/framework_processes.py)")
        if os.environ.get(CHILD):  # before anything imports a framework
            os.environ.update(environment_of(os.environ[CHILD]))

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item, nextitem):
        """True after replaying the child's reports for a test of a framework process this process
        is not; None (run it here) for every other test."""
        name = process_name(item)
        if name is None or os.environ.get(CHILD) == name:
            return None
        results, failure = _child_results(item.session, name)
        item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        item.session._setupstate.teardown_exact(nextitem)  # the collectors of the test before, as pytest would
        reports = [item.config.hook.pytest_report_from_serializable(config=item.config, data=data)
                   for data in results.get(_plain_id(item), [])]
        for report in reports or [_missing(item, name, failure)]:
            report.nodeid = item.nodeid
            item.ihook.pytest_runtest_logreport(report=report)
        item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        return True

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item):
        """A test outside every framework process must not import a framework into this one: the
        next test, whatever it is, would meet the framework as this test left it."""
        before = _loaded()
        result = yield
        imported = sorted(_loaded() - before)
        if imported and process_name(item) is None and not os.environ.get(CHILD):
            pytest.fail(f"{item.nodeid} imported {', '.join(imported)} into the pytest process. Expected: "
                        f"in_framework_process(<name>) on the test or its module (tests/framework_processes.py). "
                        f"Received: no mark", pytrace=False)
        return result

    def pytest_runtest_logreport(self, report):
        """(a child) Append each test report, serialized as xdist sends reports, to the reports file."""
        if self.reports:
            data = self.config.hook.pytest_report_to_serializable(config=self.config, report=report)
            with open(self.reports, "a", encoding="utf-8") as out:
                out.write(json.dumps(data, default=str) + "\n")


def _loaded() -> set[str]:
    return {name for name in GUARDED if name in sys.modules}


def _plain_id(item) -> str:
    """The node id without the "@group" suffix the xdist scheduling adds (the child's id)."""
    groups = sorted({str(m.args[0]) for m in item.iter_markers("xdist_group") if m.args})
    suffix = "@" + "_".join(groups)
    return item.nodeid[:-len(suffix)] if groups and item.nodeid.endswith(suffix) else item.nodeid


def _child_results(session, name: str) -> tuple[dict, str]:
    """({node id: [serialized reports]}, what went wrong if the child did not finish), computed once
    per process and name: one child runs every selected test of ``name``."""
    cache = session.config.stash.setdefault(_RESULTS, {})
    if name not in cache:
        ids = [_plain_id(i) for i in session.items if process_name(i) == name]
        cache[name] = _run_child(session.config, name, ids)
    return cache[name]


def _run_child(config, name: str, ids: list[str]) -> tuple[dict, str]:
    work = Path(tempfile.mkdtemp(prefix=f"bnconform-{name}-tests-"))
    try:
        (work / "args").write_text("\n".join(ids) + "\n", encoding="utf-8")
        command = [sys.executable, "-m", "pytest", f"@{work / 'args'}", "-q", "-p", "no:cacheprovider",
                   f"--basetemp={work / 'tmp'}", *UNRELATED_PLUGINS, *_random_order(config)]
        env = {k: v for k, v in environment_of(name).items()
               if not k.startswith("PYTEST_XDIST") and k not in ("PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST")}
        env.update({CHILD: name, REPORTS: str(work / "reports.jsonl")})
        failure = ""
        try:
            done = subprocess.run(command, cwd=config.rootpath, env=env, capture_output=True, text=True,
                                  timeout=CHILD_TIMEOUT)
            if done.returncode not in (0, 1, 5):  # 1: some test failed (its reports say which)
                failure = f"exit code {done.returncode}: {(done.stdout + done.stderr)[-3000:]}"
        except subprocess.TimeoutExpired as timeout:
            failure = f"no result within {CHILD_TIMEOUT:.0f} s: {str(timeout.stdout or '')[-3000:]}"
        return _read_reports(work / "reports.jsonl"), failure
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _random_order(config) -> list[str]:
    """pytest-randomly's seed for the child when the parent shuffles, else no shuffling there."""
    if config.pluginmanager.hasplugin("randomly") and getattr(config.option, "randomly_seed", None) is not None:
        return ["-p", "randomly", f"--randomly-seed={config.option.randomly_seed}"]
    return ["-p", "no:randomly"]


def _read_reports(path: Path) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            data = json.loads(line)
            found.setdefault(data["nodeid"], []).append(data)
    return found


def _missing(item, name: str, failure: str) -> pytest.TestReport:
    """A failed call report for a test the child never reported (it crashed, hung, or could not collect it)."""
    text = (f"the {name!r} test process did not report {_plain_id(item)}"
            + (f": {failure}" if failure else " (collected differently there?)"))
    return pytest.TestReport(item.nodeid, item.location, {}, "failed", text.rstrip(), "call")
