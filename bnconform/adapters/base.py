"""The adapter contract (documented in docs/adapters.md).

An adapter translates the canonical config of a case into one framework API's parameters,
runs every step on one device and returns what the framework computed. It never decides
pass or fail: :mod:`bnconform.judging.judge` does, against the oracle's expected values.

Subclasses set the class attributes -- above all ``capabilities`` (what the API can express,
as data: :mod:`bnconform.judging.capabilities`) and ``deviations`` (how it departs from every value
the model allows, each with a kind and a declarative selector: :mod:`bnconform.judging.declarations`,
re-exported here and from :mod:`bnconform.adapters`) -- and implement
:meth:`Adapter.run`. ``supports`` is only for limits the capability data cannot state.
Modules must not import their framework at import time, so that listing adapters stays cheap.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import ClassVar

import numpy as np

from ..caseformat.model import Case, variant  # noqa: F401  (variant: for MatchesVariant declarations)
from ..judging.capabilities import Capabilities
# The declaration vocabulary is judging's; adapter authors import it from here (or bnconform.adapters).
from ..judging.declarations import Deviation, MatchesVariant, Mismatches, Raises, Unsupported  # noqa: F401
from ..judging.selectors import Selector, has_training_step  # noqa: F401  (has_training_step: public helper)
from .environment import PythonEnvironment


class Adapter:
    """Base class of every adapter. One instance runs many cases; caching inside is welcome."""

    name: ClassVar[str] = ""  # registry name, e.g. "torch.nn"
    framework: ClassVar[str] = ""  # distribution whose version is reported, e.g. "torch"
    extra: ClassVar[str] = ""  # pip extra that installs it: bnconform[<extra>]
    install_hint: ClassVar[str] = ""  # a plug-in's own install command (else "pip install 'bnconform[<extra>]'")
    requires: ClassVar[tuple[str, ...]] = ()  # importable modules the adapter needs
    device_kinds: ClassVar[tuple[str, ...]] = ("cpu",)  # every device it can ever use
    device_note: ClassVar[str] = ""  # why it needs those devices (added to a "device not present" reason)
    environment: ClassVar[dict[str, str]] = {}  # process environment it needs (adapters with equal ones share a host process)
    isolated: ClassVar[bool] = False  # True: never share a host process with other adapters
    # A Python environment of its own (pinned requirements, built with uv in the user cache), for a
    # framework that cannot share the user's environment (tflearn: TensorFlow 2.12, NumPy < 1.24).
    python_environment: ClassVar[PythonEnvironment | None] = None
    deviations: ClassVar[tuple[Deviation, ...]] = ()
    notes: ClassVar[str] = ""  # one line for the report (e.g. "channels-last by transposition")
    speed_note: ClassVar[str] = ""  # one line: why its median ms per case is what it is, where that needs saying
    # What the API can express; the judge derives 'unsupported' (and its reason) from it before
    # run(), so an adapter never silently ignores a knob. Extensions are opt-in.
    capabilities: ClassVar[Capabilities] = Capabilities()
    # How the API spells the EMA knob and which statistic it weighs: ("momentum", "new") means
    # momentum = 1 - decay (torch); ("momentum", "old") means momentum = decay (Keras); None: no EMA knob.
    decay_parameter: ClassVar[tuple[str, str] | None] = None
    # False for an API that keeps no running statistics between calls (tf.nn.moments +
    # batch_normalization): the judge then runs each step from the state the case expects before
    # it (bnconform.judging.stepwise), update steps as plain training steps, and judges every
    # output but the running statistics, which it records as not observed.
    keeps_state: ClassVar[bool] = True
    # How the layer runs (``execution_mode``, an axis, beside the device): "eager" (the framework's own
    # call), "compiled" (a jit compiler's program: torch.compile, XLA, jax.jit), "exported" (a graph
    # an exporter wrote, run by a deployment runtime) or "folded" (BN folded into a convolution or
    # linear layer). A non-eager row names the eager row it transforms in ``eager_row`` and is named
    # ``<eager_row>+<how>`` (torch.nn+compile), so it sorts right after that row in every table.
    execution_mode: ClassVar[str] = "eager"
    eager_row: ClassVar[str] = ""

    def unavailable_reason(self) -> str | None:
        """None if the framework imports here, else why not and what to install."""
        for module in self.requires:
            try:
                importlib.import_module(module)
            except Exception as exc:  # ImportError, or a broken install raising anything
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                return f"cannot import {module} ({first})" + install_advice(type(self))
        return self.missing_tool()

    @classmethod
    def version_environment(cls, version: str) -> PythonEnvironment:
        """The environment of a version sweep's run at ``version`` of the framework: the backend's
        own environment (or none) with ``<framework>==<version>`` and :meth:`sweep_requirements`."""
        base = cls.python_environment or PythonEnvironment(cls.framework, ())
        return base.with_pins({cls.framework: version}, f"{cls.framework}-{version}", cls.sweep_requirements(version))

    @classmethod
    def sweep_requirements(cls, version: str) -> tuple[str, ...]:
        """Requirements beside ``<framework>==<version>`` in a sweep's environment (torch before 2.3
        was built against NumPy 1.x, so its environment needs ``numpy<2``)."""
        return ()

    @classmethod
    def missing_tool(cls) -> str | None:
        """Why a program the adapter needs outside Python (a compiler, say) is absent here, and how
        to install it; None when nothing is missing. Asked by the planner without importing the
        framework, so such cells are reported *unavailable* with the fix before any capability
        check can call them inexpressible."""
        return None

    def framework_version(self) -> str:
        try:
            return importlib.metadata.version(self.framework)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    def framework_defaults(self) -> dict[str, float | None]:
        """The installed framework's own defaults, read from it (e.g. the layer signature), never
        typed by hand: {"decay_parameter": 0.1, "epsilon": 1e-5}; {} when there is nothing to read."""
        return {}

    def devices(self) -> list[str]:
        """The subset of ``device_kinds`` usable on this machine (CPU always)."""
        return ["cpu"]

    def supports(self, case: Case, device: str) -> str | None:
        """Limits ``capabilities`` cannot state (checked after them): None, or why not."""
        return None

    def run(self, case: Case, device: str) -> list[dict[str, np.ndarray]]:
        """Run every step of ``case`` on ``device``; one dict of outputs per step.

        Keys are among y, batch_mean, batch_var, running_mean, running_var (and num_updates);
        y is required, others where the framework exposes them. Arrays are NumPy (any float
        dtype; compared in float64). Raise :class:`Unsupported` for knobs discovered late.
        """
        raise NotImplementedError


def install_advice(cls: type[Adapter]) -> str:
    """"; install it with: <command>" from the adapter's own hint or its bnconform extra ("" if neither)."""
    command = cls.install_hint or (f"pip install 'bnconform[{cls.extra}]'" if cls.extra else "")
    return f"; install it with: {command}" if command else ""
