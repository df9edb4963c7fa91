"""A case specification (:class:`Spec`) and how it becomes a case (:func:`build`).

A :class:`Spec` names a case, says what it pins down, and builds its inputs from a generator
seeded by the case id (SHA-256), so each case is reproducible on its own and no global seed is
ever touched. :func:`build` quantizes inputs and parameters to their dtypes, asks the oracle
for the expected results and attaches the tolerance policy. The family modules beside this one
write their specs with the step kinds and input makers defined here.

Extension cases (renorm, ghost, weighted) draw their extra values after the ones every case
draws, so adding them never changed an existing case.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..caseformat.dtypes import quantize
from ..caseformat.model import RENORM_STATE_KEYS, Case, Config, State, Step, count_per_channel
from ..reference import oracle
from ..reference.bounds import widen_stored_to_envelope
from ..reference.tolerance import step_tolerance

# Step kinds: (normalize_with, update_running_stats).
TRAIN = ("batch", True)
EVAL = ("running", False)
TRAIN_NO_UPDATE = ("batch", False)
EVAL_UPDATE = ("running", True)  # normalize with the running statistics from before the step, then update them


def normal(loc: float = 0.0, scale: float = 1.0) -> Callable:
    """Input maker: independent N(loc, scale^2) draws."""
    return lambda rng, shape: rng.normal(loc, scale, size=shape)


def drawn(inputs: Sequence[tuple[float, float]], points: Sequence[tuple] = ()) -> Callable:
    """Input maker written by ``bnconform fuzz``: step i ~ N(inputs[i][0], inputs[i][1]^2), then each
    ``(step, index, value)`` of ``points`` sets one element (a NaN, an Inf, an outlier)."""
    def make(rng, shape, index):
        loc, scale = inputs[index]
        x = rng.normal(loc, scale, size=shape)
        for step, where, value in points:
            if step == index and x.size:
                x[tuple(where)] = value
        return x
    return per_step(make)


def fixed(*values: float) -> Callable:
    """Parameter maker: exactly these per-channel values (gamma=fixed(-1.5, 0.0, 2.0))."""
    return lambda rng, channels: np.asarray(values[:channels], dtype=np.float64)


def per_step(make: Callable) -> Callable:
    """Mark an input maker that takes the step index: ``make(rng, shape, step_index)``."""
    make.per_step = True
    return make


def _make_input(make: Callable, rng, shape, index: int):
    return make(rng, shape, index) if getattr(make, "per_step", False) else make(rng, shape)


@dataclass
class Spec:
    """How to build one case. ``make_x(rng, shape)`` gives float64 inputs per step.

    ``make_dy(rng, shape, step_index)`` gives a step's upstream gradient (None: that step is
    forward only). ``description`` may be a callable ``(case) -> str`` run on the built case, so that it can
    quote what a wrong implementation would get. ``make_weights(rng, batch, step_index)`` gives
    a step's sample weights (None for none); ``renorm_mean`` / ``renorm_stddev`` make the
    renorm statistics of renorm cases.
    """

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
    make_weights: Callable | None = None
    renorm_mean: Callable | None = None
    renorm_stddev: Callable | None = None
    seed_id: str | None = None  # draw from another case's seed (a mirror shares its original's inputs)
    make_dy: Callable | None = None  # (rng, shape, step_index) -> upstream gradient or None (forward only)
    replica_sizes: Sequence[Sequence[int]] | None = None  # per step: samples per replica (cross-replica BN)

    @property
    def id(self) -> str:
        return f"{self.family}/{self.name}"

    def rng(self) -> np.random.Generator:
        digest = hashlib.sha256((self.seed_id or self.id).encode()).digest()
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
    if spec.config.renorm is not None:
        arrays.update(_renorm_state(spec, rng, channels, arrays["running_var"]))
    return State(**arrays, num_updates=spec.num_updates)


def _renorm_state(spec: Spec, rng, channels: int, running_var) -> dict:
    """renorm mean ~ N(0, 1), renorm stddev ~ U(0.5, 1.5), running stddev = sqrt(var + eps)."""
    dtype, eps = spec.config.param_dtype, spec.config.effective_epsilon
    mean = (spec.renorm_mean or (lambda r, c: r.normal(0.0, 1.0, c)))(rng, channels)
    stddev = (spec.renorm_stddev or (lambda r, c: r.uniform(0.5, 1.5, c)))(rng, channels)
    values = (mean, stddev, np.sqrt(running_var.astype(np.float64) + eps))
    return {k: quantize(v, dtype) for k, v in zip(RENORM_STATE_KEYS, values)}


def _make_steps(spec: Spec, rng, shapes) -> list[Step]:
    steps = []
    for i, (kind, shape) in enumerate(zip(spec.steps, shapes)):
        x = quantize(_make_input(spec.make_x, rng, shape, i), spec.config.input_dtype)
        computes_moments = kind[0] == "batch" or kind[1]  # weights only where moments are taken
        weights = spec.make_weights(rng, shape[0], i) if spec.make_weights and computes_moments else None
        weights = None if weights is None else quantize(weights, spec.config.input_dtype)
        steps.append(Step(kind[0], kind[1], x, sample_weights=weights))
    for step, sizes in zip(steps, spec.replica_sizes or ()):  # no draw: other cases never change
        step.replica_sizes = tuple(sizes)
    for i, step in enumerate(steps if spec.make_dy else ()):  # drawn last: forward-only cases never change
        dy = spec.make_dy(rng, step.x.shape, i)
        step.dy = None if dy is None else quantize(dy, spec.config.input_dtype)
    return steps


def _attach_traced(case: Case) -> None:
    """Expected values and tolerances of an extension case, from the oracle's trace."""
    results, traces = oracle.run_steps_traced(case.config, case.initial_state, case.steps)
    for step, expected, trace in zip(case.steps, results, traces):
        step.expected = expected
        gamma = case.initial_state.gamma * (1.0 if trace is None else trace[2])
        stats = None if trace is None else trace[:2]
        step.tolerance = step_tolerance(case.config, expected, stats, gamma, step)


def build(spec: Spec) -> Case:
    """Generate the case: inputs from the seeded rng, expected results from the oracle."""
    rng = spec.rng()
    shapes = list(spec.shapes) if len(spec.shapes) == len(spec.steps) else [spec.shapes[0]] * len(spec.steps)
    channels = shapes[0][spec.config.channel_axis]
    state = _default_state(spec, rng, channels)
    steps = _make_steps(spec, rng, shapes)
    case = Case(spec.id, spec.family, "", spec.config, state, steps)
    if case.extensions:
        _attach_traced(case)
        widen_stored_to_envelope(case)
        case.description = spec.description(case) if callable(spec.description) else spec.description
        return case
    running = (state.running_mean, state.running_var)
    for step, expected in zip(steps, oracle.run_case(case)):
        step.expected = expected
        n = count_per_channel(step.x.shape, spec.config.channel_axis)
        stats = (expected["batch_mean"], expected["batch_var"]) if step.is_training else running
        step.tolerance = step_tolerance(spec.config, expected, stats if n else None, state.gamma, step)
        running = (expected["running_mean"], expected["running_var"])
    widen_stored_to_envelope(case)  # the stored pair covers every per-element bound (reference.bounds)
    case.description = spec.description(case) if callable(spec.description) else spec.description
    return case


def gap(case: Case, output: str = "y", config: Config | None = None, steps: Sequence[Step] | None = None) -> float:
    """Largest |difference| in ``output`` over all steps between the case and the oracle run on
    another config or other steps: how far an implementation making that mistake lands. Only
    positions finite in both count (a degenerate case's Inf / NaN entries would make it NaN);
    0.0 where no finite position differs."""
    ours = [s.expected for s in case.steps]
    theirs = oracle.run_steps(config or case.config, case.initial_state, list(steps or case.steps))
    gaps = [_finite_gap(a[output], b[output]) for a, b in zip(ours, theirs)
            if a.get(output) is not None and b.get(output) is not None]
    return max(gaps, default=0.0)


def _finite_gap(ours: np.ndarray, theirs: np.ndarray) -> float:
    """max |ours - theirs| over the positions finite in both (0.0 if there are none)."""
    both = np.isfinite(ours) & np.isfinite(theirs)
    return float(np.abs(ours[both] - theirs[both]).max()) if both.any() else 0.0
