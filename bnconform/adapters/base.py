"""The adapter contract (documented in docs/adapters.md).

An adapter translates the canonical config of a case into one framework API's parameters,
runs every step on one device and returns what the framework computed. It never decides
pass or fail: :mod:`bnconform.judging.judge` does, against the oracle's expected values.

Subclasses set the class attributes -- above all ``capabilities`` (what the API can express,
as data: :mod:`bnconform.judging.capabilities`) and ``deviations`` (how it departs from every value
the model allows, each with a kind and a declarative selector) -- and implement
:meth:`Adapter.run`. ``supports`` is only for limits the capability data cannot state.
Modules must not import their framework at import time, so that listing adapters stays cheap.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np

from ..caseformat.model import Case
from ..judging.capabilities import Capabilities
from ..judging.selectors import Selector, has_training_step  # noqa: F401  (has_training_step: public helper)
from ..judging.verdict import DEVIATION_KINDS


class Unsupported(Exception):
    """Raised by an adapter when its framework cannot express the case; str() is the reason."""


@dataclass(frozen=True)
class Raises:
    """Declared behaviour: some step raises ``exception`` (class name) with a message matching ``match``."""

    exception: str
    match: str = ""

    def describe(self) -> str:
        return f"raises {self.exception}" + (f" ({self.match!r})" if self.match else "")

    def matches(self, exc: BaseException) -> bool:
        import re

        return type(exc).__name__ == self.exception and re.search(self.match, str(exc)) is not None


@dataclass(frozen=True)
class MatchesVariant:
    """Declared behaviour: results match the oracle run on ``variant(case)`` instead of the case.

    E.g. ``variant=lambda c: with_config(c, running_stats={"variance": "bessel"})`` declares a
    Bessel-corrected running variance where the case asks for a biased one.
    """

    describe_text: str
    variant: Callable[[Case], Case]

    def describe(self) -> str:
        return self.describe_text


@dataclass(frozen=True)
class Mismatches:
    """Declared behaviour: the named outputs may disagree with the oracle, every other output must
    pass, and at least one named output must differ in each selected cell (else the declaration
    is stale and the cell fails). A name that does not differ in some selected cell is allowed: one
    declaration covers cases where its effect reaches different outputs."""

    outputs: tuple[str, ...]
    describe_text: str = ""

    def describe(self) -> str:
        return self.describe_text or f"{', '.join(self.outputs)} differ from the oracle"


@dataclass(frozen=True)
class Deviation:
    """A known, documented way in which a framework departs from every value the model allows.

    ``kind`` is one of ``DEVIATION_KINDS``: ``defect`` (wrong numbers, NaN/Inf on valid finite
    input, corrupted state, contradicts the framework's own docs), ``precision`` (right formula,
    lost digits), ``dtype`` (computes in another precision than the input's or parameters'),
    ``edge`` (a choice at a point the model leaves undefined or rejects: N = 1, N = 0, eps = 0).
    A convention (a knob value the model allows) is not a deviation: declare it in
    ``Adapter.capabilities``. ``applies`` selects the cells; its text is the report's "applies
    to". Every run re-checks ``behaviour`` in every selected cell: if it is not observed there
    the cell fails, so a declaration cannot outlive the behaviour it describes.
    """

    name: str
    kind: str
    applies: Selector
    behaviour: Raises | MatchesVariant | Mismatches
    explanation: str
    link: str

    def __post_init__(self):
        if self.kind not in DEVIATION_KINDS:
            raise ValueError(f"deviation {self.name!r}: kind Expected: one of {DEVIATION_KINDS}. Received: {self.kind!r}")
        if not isinstance(self.applies, Selector):
            raise TypeError(f"deviation {self.name!r}: applies Expected: a bnconform.judging.selectors.Selector. "
                            f"Received: {type(self.applies).__name__}")

    @property
    def applies_to(self) -> str:
        return self.applies.describe()


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
    deviations: ClassVar[tuple[Deviation, ...]] = ()
    notes: ClassVar[str] = ""  # one line for the report (e.g. "channels-last by transposition")
    speed_note: ClassVar[str] = ""  # one line: why its median ms per case is what it is, where that needs saying
    # What the API can express; the judge derives 'unsupported' (and its reason) from it before
    # run(), so an adapter never silently ignores a knob. Extensions are opt-in.
    capabilities: ClassVar[Capabilities] = Capabilities()
    # How the API spells the EMA knob and which statistic it weighs: ("momentum", "new") means
    # momentum = 1 - decay (torch); ("momentum", "old") means momentum = decay (Keras); None: no EMA knob.
    decay_parameter: ClassVar[tuple[str, str] | None] = None

    def unavailable_reason(self) -> str | None:
        """None if the framework imports here, else why not and what to install."""
        for module in self.requires:
            try:
                importlib.import_module(module)
            except Exception as exc:  # ImportError, or a broken install raising anything
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                return f"cannot import {module} ({first})" + install_advice(type(self))
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


def variant(case: Case, running_stats: dict | None = None, **config_changes) -> Case:
    """A copy of ``case`` with some config knobs changed, for :class:`MatchesVariant`.

    Example: ``variant(c, running_stats={"variance": "bessel"}, epsilon=1e-3)``.
    """
    from dataclasses import replace

    config = replace(case.config, **config_changes)
    if running_stats:
        config = config.with_running(**running_stats)
    return replace(case, config=config)
