"""What ``bnconform fuzz`` searches: a hypothesis strategy over the knob space and the inputs.

A :class:`Draw` is one point of the space: a :class:`~bnconform.caseformat.model.Config`, the steps (kinds
and shapes), each step's input distribution N(loc, scale^2) with NaN/Inf/outlier points placed
in it, gamma, the resumed counter and whether steps carry an upstream gradient. It becomes an
ordinary :class:`~bnconform.specs.Spec` (inputs drawn from the id-seeded generator, as every
shipped case), so a finding is written as a case file plus the spec code that regenerates it.

The strategy draws only values the backend's :class:`~bnconform.judging.capabilities.Capabilities`
declare (ranks, channel positions, dtypes, step kinds, conventions, counters, gradients), so
almost every example runs. Every list is ordered simplest first, since hypothesis shrinks towards
the first choice: float32, one training step, eps 1e-5, offset 0, spread 1.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import MISSING, dataclass, fields, is_dataclass, replace

from hypothesis import strategies as st

from ..caseformat.model import Config, RunningStats
from ..judging.capabilities import Capabilities
from ..specs import Spec, drawn, fixed
from ..specs.gradients import random_dy

DTYPE_ORDER = ("float32", "float64", "float16", "bfloat16")
STEP_ORDER = (("batch", True), ("running", False), ("batch", False), ("running", True))
EPSILONS = (1e-5, 1e-3, 0.0, 1e-8, 0.1, 1.0)
FLOORS = (0.0, 1.001e-5)
DECAYS = (0.9, 0.1, 0.5, 0.99, 0.0, 1.0, 0.999)
RESUMED = (0, 1, 3, 100)
LOCS = (0.0, 0.5, -2.0, 3.0, 30.0, 300.0, -700.0, 1e4, 1e6)  # offsets: none ... far beyond the spread
SCALES = (1.0, 0.1, 10.0, 1e-3, 1e3, 1e-6)
SPECIALS = (math.nan, math.inf, -math.inf, 0.0, 1e30, 65504.0)
GAMMAS = (1.0, -1.5, 0.0, 0.5, 2.0)
BATCHES = (4, 2, 1, 3, 8, 0, 16, 64)


@dataclass(frozen=True)
class Draw:
    """One example: everything a Spec needs besides its family and name."""

    config: Config
    steps: tuple
    shapes: tuple
    inputs: tuple  # (loc, scale) per step
    points: tuple = ()  # (step, index, value)
    gamma: tuple | None = None
    num_updates: int = 0
    dy: bool = False

    def family(self) -> str:
        """The shipped family whose subject the example is (where a finding would be promoted)."""
        counts = [math.prod(s) // max(s[self.config.channel_axis], 1) for s in self.shapes]
        updates = sum(1 for kind in self.steps if kind[1])
        if self.dy:
            return "gradients"
        if self.points or min(counts) <= 1 or self.config.epsilon == 0.0:
            return "degenerate"
        if updates > 1 or self.num_updates or any(kind == ("running", True) for kind in self.steps):
            return "momentum"
        if self.config.epsilon_mode != "add_inside_sqrt" or self.config.epsilon_floor:
            return "epsilon"
        return "formulas"

    def name(self, backend: str) -> str:
        digest = hashlib.sha256(repr(self).encode()).hexdigest()[:8]
        return f"fuzz_{''.join(c if c.isalnum() else '_' for c in backend)}_{digest}"

    def spec(self, family: str, name: str, description: str) -> Spec:
        return Spec(family, name, description, self.config, list(self.shapes), self.steps,
                    drawn(self.inputs, self.points), gamma=None if self.gamma is None else fixed(*self.gamma),
                    num_updates=self.num_updates, make_dy=random_dy if self.dy else None)

    def imports(self) -> str:
        """The import lines :meth:`spec_code` needs."""
        names = ["Spec", "drawn"] + (["fixed"] if self.gamma is not None else [])
        model = ["Config"] + (["RunningStats"] if "RunningStats(" in _short(self.config) else [])
        return (f"from bnconform.caseformat.model import {', '.join(model)}\nfrom bnconform.specs import {', '.join(names)}\n"
                + ("from bnconform.specs.gradients import random_dy\n" if self.dy else ""))

    def spec_code(self, family: str, name: str, description: str) -> str:
        """Python that rebuilds exactly ``spec(family, name, description)`` (see bnconform.interfaces.fuzz)."""
        args = [repr(family), repr(name), repr(description), _short(self.config), repr(list(self.shapes)),
                repr(self.steps), f"drawn({_literal(self.inputs)}, {_literal(self.points)})"]
        args += [f"gamma=fixed{_literal(self.gamma)}"] if self.gamma is not None else []
        args += [f"num_updates={self.num_updates}"] if self.num_updates else []
        args += ["make_dy=random_dy"] if self.dy else []
        return "SPEC = Spec(\n    " + ",\n    ".join(args) + ",\n)\n"


_SAMPLED: dict = {}


def _one_of(values: tuple) -> st.SearchStrategy:
    """st.sampled_from, built once per tuple (building strategies per example costs ~10 ms); keyed
    by type and value, since (0, 1) == (False, True) as a dict key."""
    key = tuple((type(v), repr(v)) for v in values)
    if key not in _SAMPLED:
        _SAMPLED[key] = st.sampled_from(values) if values else st.nothing()
    return _SAMPLED[key]


@functools.lru_cache(maxsize=None)
def _between(low: int, high: int) -> st.SearchStrategy:
    return st.integers(low, high)


def _short(value) -> str:
    """A dataclass as its constructor call with only the fields that differ from the defaults."""
    if not is_dataclass(value):
        return repr(value)
    changed = [f"{f.name}={_short(getattr(value, f.name))}" for f in fields(value)
               if f.default is MISSING and f.default_factory is MISSING
               or getattr(value, f.name) != (f.default if f.default is not MISSING else f.default_factory())]
    return f"{type(value).__name__}({', '.join(changed)})"


def _literal(value) -> str:
    """repr() that Python reads back, with non-finite floats as float('nan') / float('inf')."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"float({str(value)!r})"
    if isinstance(value, tuple):
        inner = ", ".join(_literal(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return repr(value)


def _ordered(values, order) -> tuple:
    return tuple(sorted(values, key=lambda v: order.index(v) if v in order else len(order)))


@functools.lru_cache(maxsize=None)
def _kinds(kinds: tuple) -> st.SearchStrategy:
    """One to four steps, each of a kind the API has."""
    return st.lists(_one_of(kinds), min_size=1, max_size=4)


@functools.lru_cache(maxsize=None)
def _gammas(channels: int) -> st.SearchStrategy:
    """None (the default U(0.5, 1.5) draw) or one value per channel, negative and zero among them."""
    return st.none() | st.tuples(*[_one_of(GAMMAS)] * channels)


def _axis(caps: Capabilities, rank: int) -> st.SearchStrategy:
    """Channel axes the API allows (never axis 0, the batch axis): first = 1, last, other."""
    places = {"first": [1], "last": [rank - 1], "other": list(range(2, rank - 1))}
    axes = sorted({a for p in caps.channel_positions for a in places[p]})
    return _one_of(tuple(axes))


def _running(draw, caps: Capabilities) -> tuple[RunningStats, int]:
    rule = draw(_one_of(_ordered(caps.running_rules, ("ema", "cumulative"))))
    variance = draw(_one_of(_ordered(caps.running_variance, ("bessel", "biased"))))
    resumed = draw(_one_of(RESUMED)) if caps.resumes_counter else 0
    if rule == "cumulative":
        return RunningStats(rule="cumulative", decay=None, variance=variance), resumed
    schedule = draw(_one_of(_ordered(caps.num_updates_schedule, (False, True))))
    debias = False if resumed else draw(_one_of(_ordered(caps.zero_debias, (False, True))))
    decay = draw(_one_of(tuple(d for d in DECAYS if d < 1) if debias else DECAYS))  # 1 - 1^t = 0
    return RunningStats(decay=decay, variance=variance, zero_debias=debias, num_updates_schedule=schedule), resumed


def _config(draw, caps: Capabilities, rank: int) -> Config:
    pairs = sorted(caps.dtypes, key=lambda p: (DTYPE_ORDER.index(p[0]), DTYPE_ORDER.index(p[1])))
    dtype, param = draw(_one_of(tuple(pairs)))
    scale = draw(_one_of((True, False)))
    center = draw(_one_of((True, False))) if caps.separate_scale_center else scale
    return Config(channel_axis=draw(_axis(caps, rank)), epsilon=draw(_one_of(EPSILONS)),
                  epsilon_mode=draw(_one_of(_ordered(caps.epsilon_modes, ("add_inside_sqrt",)))),
                  epsilon_floor=draw(_one_of(FLOORS)), scale=scale, center=center,
                  input_dtype=dtype, param_dtype=param)


def _shape(batch: int, channels: int, spatial: list, axis: int) -> tuple:
    dims = list(spatial)
    dims.insert(axis - 1, channels)
    return (batch, *dims)


def _points(draw, shapes) -> tuple:
    """Up to two special values, each at one element of a non-empty step's input."""
    steps = [i for i, s in enumerate(shapes) if math.prod(s)]
    if not steps:
        return ()
    found = []
    for _ in range(draw(_between(0, 2))):
        step = draw(_one_of(tuple(steps)))
        index = tuple(draw(_one_of(tuple(range(d)))) for d in shapes[step])  # uniform: the last sample too
        found.append((step, index, draw(_one_of(SPECIALS))))
    return tuple(found)


@st.composite
def draws(draw, caps: Capabilities) -> Draw:
    """One example within ``caps``: the strategy ``bnconform fuzz`` searches."""
    rank = draw(_one_of(tuple(sorted(caps.ranks))))
    config = _config(draw, caps, rank)
    running, resumed = _running(draw, caps)
    config = replace(config, running_stats=running)
    kinds = _ordered(caps.step_kinds, STEP_ORDER)
    steps = tuple(draw(_kinds(kinds)))
    channels, spatial = draw(_between(1, 4)), [draw(_between(1, 3)) for _ in range(rank - 2)]
    batches = [draw(_one_of(BATCHES)) for _ in steps]
    shapes = tuple(_shape(b, channels, spatial, config.channel_axis) for b in batches)
    inputs = tuple((draw(_one_of(LOCS)), draw(_one_of(SCALES))) for _ in steps)
    gamma = draw(_gammas(channels))
    modes = {kind[0] for kind in steps}
    dy = bool(caps.gradients) and modes <= caps.gradients and draw(_one_of((False, True)))
    return Draw(config, steps, shapes, inputs, _points(draw, shapes), gamma, resumed, dy)
