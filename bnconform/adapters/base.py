"""The adapter contract (documented in docs/adapters.md).

An adapter translates the canonical config of a case into one framework API's parameters,
runs every step on one device and returns what the framework computed. It never decides
pass or fail: :mod:`bnconform.judge` does, against the oracle's expected values.

Subclasses set the class attributes and implement :meth:`Adapter.run`; ``supports`` and
``framework_version`` usually need overriding too. Modules must not import their framework at
import time (import it inside methods), so that listing adapters stays cheap.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np

from ..model import Case


class Unsupported(Exception):
    """Raised by an adapter when its framework cannot express the case; str() is the reason."""


@dataclass(frozen=True)
class Raises:
    """Declared behaviour: some step raises ``exception`` (class name) with a message matching ``match``."""

    exception: str
    match: str = ""

    def describe(self) -> str:
        return f"raises {self.exception}" + (f" ({self.match!r})" if self.match else "")


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
    """Declared behaviour: exactly the named outputs disagree with the oracle (the rest pass)."""

    outputs: tuple[str, ...]
    describe_text: str = ""

    def describe(self) -> str:
        return self.describe_text or f"{', '.join(self.outputs)} differ from the oracle"


@dataclass(frozen=True)
class Deviation:
    """A known, documented way in which a framework differs from the canonical model.

    ``applies(case, device)`` selects the cells; ``applies_to`` says the same in words for the
    report. Each run re-checks ``behaviour``: if it is not observed the cell fails, so a
    declaration cannot outlive the behaviour it describes.
    """

    name: str
    applies_to: str
    applies: Callable[[Case, str], bool]
    behaviour: Raises | MatchesVariant | Mismatches
    explanation: str
    link: str


class Adapter:
    """Base class of every adapter. One instance runs many cases; caching inside is welcome."""

    name: ClassVar[str] = ""  # registry name, e.g. "torch.nn"
    framework: ClassVar[str] = ""  # distribution whose version is reported, e.g. "torch"
    extra: ClassVar[str] = ""  # pip extra that installs it: bnconform[<extra>]
    requires: ClassVar[tuple[str, ...]] = ()  # importable modules the adapter needs
    device_kinds: ClassVar[tuple[str, ...]] = ("cpu",)  # every device it can ever use
    environment: ClassVar[dict[str, str]] = {}  # process environment it needs (own process)
    deviations: ClassVar[tuple[Deviation, ...]] = ()
    notes: ClassVar[str] = ""  # one line for the report (e.g. "channels-last by transposition")
    # Model extensions (model.EXTENSIONS) this adapter translates; a case using any other one is
    # judged 'unsupported' before run(), so that an adapter cannot silently ignore the knob.
    handles_extensions: ClassVar[frozenset[str]] = frozenset()

    def unavailable_reason(self) -> str | None:
        """None if the framework imports here, else why not and what to install."""
        for module in self.requires:
            try:
                importlib.import_module(module)
            except Exception as exc:  # ImportError, or a broken install raising anything
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                return f"cannot import {module} ({first}); install it with: pip install 'bnconform[{self.extra}]'"
        return None

    def framework_version(self) -> str:
        try:
            return importlib.metadata.version(self.framework)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    def devices(self) -> list[str]:
        """The subset of ``device_kinds`` usable on this machine (CPU always)."""
        return ["cpu"]

    def supports(self, case: Case, device: str) -> str | None:
        """None if the case can be expressed, else the reason it cannot."""
        return None

    def run(self, case: Case, device: str) -> list[dict[str, np.ndarray]]:
        """Run every step of ``case`` on ``device``; one dict of outputs per step.

        Keys are among y, batch_mean, batch_var, running_mean, running_var (and num_updates);
        y is required, others where the framework exposes them. Arrays are NumPy (any float
        dtype; compared in float64). Raise :class:`Unsupported` for knobs discovered late.
        """
        raise NotImplementedError


def uses_extensions(case: Case, handled: frozenset[str] = frozenset()) -> str | None:
    """The reason a case is unsupported because it uses an extension not in ``handled``, else None."""
    for name in case.extensions:
        if name not in handled:
            return f"case uses {name} (not expressed by this adapter)"
    return None


def variant(case: Case, running_stats: dict | None = None, **config_changes) -> Case:
    """A copy of ``case`` with some config knobs changed, for :class:`MatchesVariant`.

    Example: ``variant(c, running_stats={"variance": "bessel"}, epsilon=1e-3)``.
    """
    from dataclasses import replace

    config = replace(case.config, **config_changes)
    if running_stats:
        config = config.with_running(**running_stats)
    return replace(case, config=config)


def has_training_step(case: Case, min_count: int | None = None, max_count: int | None = None) -> bool:
    """True if some step normalizes with batch statistics and its N lies in [min_count, max_count]."""
    for step, n in zip(case.steps, case.reduce_counts()):
        if step.is_training and (min_count is None or n >= min_count) and (max_count is None or n <= max_count):
            return True
    return False
