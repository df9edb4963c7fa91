"""Case specifications: the code that every golden vector is generated from.

A :class:`Spec` names a case, says what it pins down, and builds its inputs from a generator
seeded by the case id (SHA-256), so each case is reproducible on its own and no global seed is
ever touched. :func:`build` quantizes inputs and parameters to their dtypes, asks the oracle
for the expected results and attaches the tolerance policy.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .. import oracle
from ..dtypes import quantize
from ..model import Case, Config, State, Step, count_per_channel
from ..tolerance import step_tolerance

FAMILIES = ("formulas", "epsilon", "momentum", "degenerate")

# Step kinds: (normalize_with, update_running_stats).
TRAIN = ("batch", True)
EVAL = ("running", False)
TRAIN_NO_UPDATE = ("batch", False)


def normal(loc: float = 0.0, scale: float = 1.0) -> Callable:
    """Input maker: independent N(loc, scale^2) draws."""
    return lambda rng, shape: rng.normal(loc, scale, size=shape)


def per_step(make: Callable) -> Callable:
    """Mark an input maker that takes the step index: ``make(rng, shape, step_index)``."""
    make.per_step = True
    return make


def _make_input(make: Callable, rng, shape, index: int):
    return make(rng, shape, index) if getattr(make, "per_step", False) else make(rng, shape)


@dataclass
class Spec:
    """How to build one case. ``make_x(rng, shape)`` gives float64 inputs per step."""

    family: str
    name: str
    description: str
    config: Config
    shapes: Sequence[tuple]
    steps: Sequence[tuple] = (TRAIN,)
    make_x: Callable = field(default_factory=normal)
    gamma: Callable | None = None
    beta: Callable | None = None
    running_mean: Callable | None = None
    running_var: Callable | None = None
    num_updates: int = 0

    @property
    def id(self) -> str:
        return f"{self.family}/{self.name}"

    def rng(self) -> np.random.Generator:
        digest = hashlib.sha256(self.id.encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _default_state(spec: Spec, rng, channels: int) -> State:
    """gamma ~ U(0.5, 1.5), beta ~ N(0, 0.5), running mean ~ N(0, 1), running var ~ U(0.5, 2)."""
    makers = {
        "gamma": spec.gamma or (lambda r, c: r.uniform(0.5, 1.5, c)),
        "beta": spec.beta or (lambda r, c: r.normal(0.0, 0.5, c)),
        "running_mean": spec.running_mean or (lambda r, c: r.normal(0.0, 1.0, c)),
        "running_var": spec.running_var or (lambda r, c: r.uniform(0.5, 2.0, c)),
    }
    arrays = {k: quantize(make(rng, channels), spec.config.param_dtype) for k, make in makers.items()}
    return State(**arrays, num_updates=spec.num_updates)


def build(spec: Spec) -> Case:
    """Generate the case: inputs from the seeded rng, expected results from the oracle."""
    rng = spec.rng()
    shapes = list(spec.shapes) if len(spec.shapes) == len(spec.steps) else [spec.shapes[0]] * len(spec.steps)
    channels = shapes[0][spec.config.channel_axis]
    state = _default_state(spec, rng, channels)
    steps = [Step(kind[0], kind[1], quantize(_make_input(spec.make_x, rng, shape, i), spec.config.input_dtype))
             for i, (kind, shape) in enumerate(zip(spec.steps, shapes))]
    case = Case(spec.id, spec.family, spec.description, spec.config, state, steps)
    running = (state.running_mean, state.running_var)
    for step, expected in zip(steps, oracle.run_case(case)):
        step.expected = expected
        n = count_per_channel(step.x.shape, spec.config.channel_axis)
        stats = (expected["batch_mean"], expected["batch_var"]) if step.is_training else running
        step.tolerance = step_tolerance(spec.config, expected, stats if n else None, state.gamma)
        running = (expected["running_mean"], expected["running_var"])
    return case


def all_specs(families: Sequence[str] = FAMILIES) -> list[Spec]:
    """Every spec of the named families, in a stable order."""
    from . import degenerate, epsilon, formulas, momentum

    modules = {"formulas": formulas, "epsilon": epsilon, "momentum": momentum, "degenerate": degenerate}
    return [spec for family in families for spec in modules[family].specs()]
