"""Adapters that misbehave on purpose, for the isolation and sensitivity tests.

Each wrong adapter implements BN with exactly one classic bug, using the oracle's building
blocks for everything else, so a case family that misses the bug is visible at once.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

import numpy as np

from bnconform.reference import oracle
from bnconform.adapters.base import Adapter, Deviation, Raises, variant
from bnconform.judging.selectors import training_step


class CrashingAdapter(Adapter):
    """Aborts the whole interpreter on the formulas family (like a segfaulting kernel)."""

    name, framework = "test.crashing", "numpy"

    def run(self, case, device):
        if case.family == "formulas":
            os.abort()
        return oracle.run_case(case)


class HangingAdapter(Adapter):
    """Never returns on one case; must cost only that cell (timeout). As it starts hanging it
    appends the case id to the file $BNCONFORM_TEST_MARKER names (if set): a test can wait for
    that moment instead of sleeping."""

    name, framework = "test.hanging", "numpy"

    def run(self, case, device):
        if case.id == "degenerate/c1_rank2":
            marker = os.environ.get("BNCONFORM_TEST_MARKER")
            if marker:
                with open(marker, "a") as file:
                    file.write(case.id + "\n")
            time.sleep(3600)
        return oracle.run_case(case)


class AllocatingAdapter(Adapter):
    """Allocates (and touches) memory without end on one case, as a runaway shape or a leak would;
    the controller's per-host memory limit must cost only that cell."""

    name, framework = "test.allocating", "numpy"

    def run(self, case, device):
        if case.id == "degenerate/c1_rank2":
            hoard = []
            while True:
                hoard.append(np.ones(2**23))  # 64 MiB, written to: resident at once
        return oracle.run_case(case)


class RaisingAdapter(Adapter):
    """Raises an unexpected exception on every case: error verdicts, not a crash."""

    name, framework = "test.raising", "numpy"

    def run(self, case, device):
        raise RuntimeError("kernel exploded\nsecond line never shown")


class StaleDeviationAdapter(Adapter):
    """Declares that N=1 training raises, but computes correctly: the declaration is stale."""

    name, framework = "test.stale", "numpy"
    deviations = (Deviation("n1-raises", "edge", training_step(1, 1),
                            Raises("ValueError", "Expected more than 1 value"),
                            "pretends to be torch", "https://example.invalid/stale"),)

    def run(self, case, device):
        return oracle.run_case(case)


class _Wrong(Adapter):
    """Run the oracle on a modified case (the bug), report it as if it were the real one."""

    framework = "numpy"

    def wrong_case(self, case):
        raise NotImplementedError

    def run(self, case, device):
        return oracle.run_case(self.wrong_case(case))


class EpsOutsideSqrt(_Wrong):
    name = "wrong.eps_outside_sqrt"

    def wrong_case(self, case):
        return variant(case, epsilon_mode="add_outside_sqrt")


class MomentumFlipped(_Wrong):
    """Reads decay as the weight on the new batch (torch momentum mistaken for Keras momentum)."""

    name = "wrong.momentum_flipped"

    def wrong_case(self, case):
        rs = case.config.running_stats
        return variant(case, running_stats={"decay": 1 - rs.decay}) if rs.decay is not None else case


class VarianceKindSwapped(_Wrong):
    name = "wrong.variance_swapped"

    def wrong_case(self, case):
        other = "biased" if case.config.running_stats.variance == "bessel" else "bessel"
        return variant(case, running_stats={"variance": other})


class UpdatesInEval(_Wrong):
    name = "wrong.updates_in_eval"

    def wrong_case(self, case):
        steps = [replace(s, update_running_stats=True) if not s.is_training else s for s in case.steps]
        return replace(case, steps=steps)


class IgnoresBeta(_Wrong):
    name = "wrong.ignores_beta"

    def wrong_case(self, case):
        return variant(case, center=False)


class WrongReductionAxes(Adapter):
    """Reduces over the batch axis only (per-position statistics), as a 2-D-only BN would."""

    name, framework = "wrong.reduction_axes", "numpy"

    def run(self, case, device):
        from mutants import _per_position  # the same wrong reduction the mutant catalogue plants

        return _per_position(case, oracle.run_case(case))


class MissingFrameworkAdapter(Adapter):
    """Requires a module that is not installed: presettled unavailable on the controller. Its run()
    writes a marker file, so a test can tell that no host ever ran it."""

    name, framework, requires = "test.missing", "bnconform-no-such-framework", ("bnconform_no_such_framework",)

    def run(self, case, device):
        marker = os.environ.get("BNCONFORM_TEST_MARKER")
        if marker:
            open(marker, "a").write(case.id + "\n")
        return oracle.run_case(case)
