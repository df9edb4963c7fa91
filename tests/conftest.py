import sys
from pathlib import Path

import pytest

# The faulty adapters are importable both here and in worker processes (via PYTHONPATH).
TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))


def requires(*modules: str):
    """Skip a test module when a framework is not installed, WITHOUT importing it: collection in
    every xdist worker stays cheap, and only the worker that runs these tests pays the import."""
    import importlib.util

    import pytest

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(bool(missing), reason=f"not installed: {', '.join(missing)}")


@pytest.fixture
def tf_host_environment(monkeypatch):
    """The environment the matrix's TensorFlow host gives these adapters (KERAS_BACKEND=tensorflow),
    set before any test of the "tensorflow" group imports Keras 3: Keras reads it at its first
    import, which tf_keras triggers too, whichever test of the group runs first."""
    from bnconform.adapters.tensorflow.common import TF_ENVIRONMENT

    for key, value in TF_ENVIRONMENT.items():
        monkeypatch.setenv(key, value)
