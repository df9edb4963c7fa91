"""The NumPy float64 oracle as an adapter: the reference row of the matrix (must pass 100%).

Gradients: for a step with an upstream dy, :func:`bnconform.reference.oracle.run_case` also returns the
oracle's dx, dgamma, dbeta (bnconform.reference.gradients), for both normalize_with values.
"""

from __future__ import annotations

from ..caseformat.model import EXTENSIONS, NORMALIZE_WITH
from ..judging.capabilities import Capabilities
from ..reference import oracle
from .base import Adapter


class OracleAdapter(Adapter):
    """Runs :func:`bnconform.reference.oracle.run_case`; every canonical knob is native."""

    name = "numpy.oracle"
    framework = "numpy"
    extra = "test"
    requires = ("numpy",)
    # every knob, every extension; run_case returns the oracle's dx, dgamma, dbeta for a step with dy
    capabilities = Capabilities(extensions=frozenset(EXTENSIONS), gradients=frozenset(NORMALIZE_WITH))
    notes = "the float64 reference itself; a failure here means the case file is stale"

    def run(self, case, device):
        return oracle.run_case(case)
