"""What an adapter can declare about its API's behaviour, and the contract the judge relies on.

A :class:`Deviation` names a known departure from every value the model allows, with a kind, a
selector of the cells it applies to, and the behaviour the judge re-verifies in each of them:
:class:`Raises`, :class:`MatchesVariant` or :class:`Mismatches`. :class:`Unsupported` is what an
adapter raises for a knob it discovers late. Adapters import these from :mod:`bnconform.adapters`;
they live here because the judge gives them their meaning (:mod:`.judge`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, ClassVar, Protocol

import numpy as np

from ..caseformat.model import Case
from .capabilities import Capabilities
from .selectors import Selector
from .verdict import DEVIATION_KINDS


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
    # The framework versions it holds in, as comparisons joined by commas (">=2.3", ">=2.1,<2.5");
    # "" = every version. A version outside the range does not apply it (a version sweep, bnconform
    # history, shows where the behaviour began or ended).
    versions: str = ""

    def __post_init__(self):
        if self.kind not in DEVIATION_KINDS:
            raise ValueError(f"deviation {self.name!r}: kind Expected: one of {DEVIATION_KINDS}. Received: {self.kind!r}")
        if not isinstance(self.applies, Selector):
            raise TypeError(f"deviation {self.name!r}: applies Expected: a bnconform.judging.selectors.Selector. "
                            f"Received: {type(self.applies).__name__}")

    @property
    def applies_to(self) -> str:
        return self.applies.describe() + (f" (versions {self.versions})" if self.versions else "")

    def holds_in(self, version: str) -> bool:
        """Whether ``version`` of the framework is inside :attr:`versions` (an unknown one is)."""
        have = release(version)
        if not self.versions or not have:
            return True
        for bound in self.versions.split(","):
            op = bound.strip().rstrip("0123456789.")
            want = release(bound.strip()[len(op):])
            if not _COMPARE[op.strip()](have, want):
                return False
        return True


_COMPARE = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b, "<": lambda a, b: a < b,
            "==": lambda a, b: a[:len(b)] == b}


def release(version: str) -> tuple[int, ...]:
    """'2.1.2+cpu' -> (2, 1, 2), '3.3.3 (jax 0.4.26)' -> (3, 3, 3), '2.0.0rc1' -> (2, 0, 0): the
    leading dotted numbers, for comparing versions (what follows them never counts)."""
    leading = re.match(r"\d+(?:\.\d+)*", version.strip())
    return tuple(int(piece) for piece in leading.group(0).split(".")) if leading else ()


class AdapterContract(Protocol):
    """What the judge uses of an adapter (bnconform.adapters.Adapter provides it all)."""

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    deviations: ClassVar[tuple[Deviation, ...]]
    keeps_state: ClassVar[bool]  # False: judged step by step from the expected state (judging.stepwise)

    def supports(self, case: Case, device: str) -> str | None: ...

    def run(self, case: Case, device: str) -> list[dict[str, np.ndarray]]: ...
