"""The NumPy float64 oracle as an adapter: the reference row of the matrix (must pass 100%)."""

from __future__ import annotations

from .. import oracle
from ..capabilities import Capabilities
from ..model import EXTENSIONS
from .base import Adapter


class OracleAdapter(Adapter):
    """Runs :func:`bnconform.oracle.run_case`; every canonical knob is native."""

    name = "numpy.oracle"
    framework = "numpy"
    extra = "test"
    requires = ("numpy",)
    capabilities = Capabilities(extensions=frozenset(EXTENSIONS))  # every knob, every extension
    notes = "the float64 reference itself; a failure here means the case file is stale"

    def run(self, case, device):
        return oracle.run_case(case)
