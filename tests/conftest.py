import json
import subprocess
import sys
from pathlib import Path

import pytest

# The faulty adapters are importable both here and in worker processes (via PYTHONPATH).
TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

from framework_processes import FrameworkProcesses, in_framework_process  # noqa: E402, F401 (for test modules)


def pytest_configure(config):
    """Framework tests run in child processes with their host's environment (framework_processes)."""
    config.pluginmanager.register(FrameworkProcesses(config), "bnconform-framework-processes")


def one_error_line(code: int, err: str, *needles: str, after_progress: bool = False) -> str:
    """The rule for bad input: exit status 2, no traceback, and one line on stderr holding every
    needle -- the only line, or (``after_progress``: a run's progress bar comes first) the last,
    and the only one starting "bnconform". Returns that line."""
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("bnconform")] if after_progress else lines
    assert code == 2, f"Expected: exit 2. Received: {code}; stderr:\n{err[-2000:]}"
    assert len(errors) == 1 and errors[0] == lines[-1] and "Traceback" not in err, f"Expected: one line. Received:\n{err[-2000:]}"
    missing = [n for n in needles if n not in errors[0]]
    assert not missing, f"Expected: {missing} in the line. Received: {errors[0]}"
    return errors[0]


def requires(*modules: str):
    """Skip a test module when a framework is not installed, WITHOUT importing it: collection in
    every xdist worker stays cheap, and only the worker that runs these tests pays the import."""
    import importlib.util

    import pytest

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(bool(missing), reason=f"not installed: {', '.join(missing)}")


def registered_adapter(name: str):
    """A new instance of the registered adapter ``name``; the test is skipped when a framework it
    requires is not installed (each is imported here: call it from a test in its framework process)."""
    from bnconform.adapters.registry import resolve

    cls = resolve(name)
    for module in cls.requires:
        pytest.importorskip(module)
    return cls()


# Stages a fresh interpreter imports in this order (fresh_imports); each names what it loads.
IMPORT_STAGES = {
    "commands": ("bnconform.interfaces.subcommands",),
    "cli": ("bnconform", "bnconform.interfaces.cli", "bnconform.adapters.registry", "bnconform.interfaces.pytest_plugin"),
    "keras adapters": ("bnconform.adapters.keras3", "bnconform.adapters.tensorflow.keras"),
    "torch adapters": ("bnconform.adapters.torch.nn", "bnconform.adapters.torch.functional"),
    "jax adapters": ("bnconform.adapters.jax.flax_linen", "bnconform.adapters.jax.flax_nnx",
                     "bnconform.adapters.jax.haiku", "bnconform.adapters.jax.equinox"),
}
FRAMEWORKS = ("torch", "tensorflow", "tf_keras", "keras", "jax", "flax", "haiku", "equinox", "onnxruntime")
_FRESH_IMPORTS = """
import importlib, json, sys
stages, frameworks, report = json.loads(sys.argv[1]), json.loads(sys.argv[2]), {}
for stage, modules in stages.items():
    for module in modules:
        importlib.import_module(module)
    report[stage] = {"frameworks": sorted(m for m in frameworks if m in sys.modules),
                     "bnconform.interfaces.cli": "bnconform.interfaces.cli" in sys.modules}
print(json.dumps(report))
"""


@pytest.fixture(scope="session")
def fresh_imports():
    """What one fresh interpreter has loaded after each of IMPORT_STAGES, imported in order: for
    each stage, the framework modules (FRAMEWORKS) in sys.modules, and whether bnconform.interfaces.cli is.
    Cumulative: a framework that an earlier stage imported shows in every later one, so a stage's
    list is empty only if nothing up to it imported a framework (one process, not one per test)."""
    done = subprocess.run([sys.executable, "-c", _FRESH_IMPORTS, json.dumps(IMPORT_STAGES), json.dumps(FRAMEWORKS)],
                          cwd=TESTS.parent, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)
