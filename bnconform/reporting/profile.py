"""The semantics profile: per backend, the facts a porter needs, each measured from this run.

Every value is derived from the document's verdicts, its ``case_meta`` (case properties recorded
by :func:`bnconform.reporting.results.build`) and the adapters' metadata (``decay_parameter``, ``defaults``
read from the installed framework, deviation kinds and effects); nothing is typed per framework.
A row's evidence is the cells whose cases pin that fact down, selected by case properties:

* a cell that ran (pass or deviation) is *measured* evidence; a deviation says how the framework
  departs on that row (its declared behaviour, re-verified this run);
* only unsupported cells: the value is the declared capability (status "not measured");
* a fail or error cell among the evidence is shown first: the row's fact is then unknown.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

RAN = ("pass", "deviation")
HALF = ("float16", "bfloat16")
CANCELLATION = 1e3  # |mean| / std of a channel from which E[x^2] - E[x]^2 loses float32 digits

ROWS: list[tuple[str, str]] = [
    ("momentum", "momentum convention (default)"),
    ("epsilon", "epsilon default, placement"),
    ("running_variance", "running variance"),
    ("zero_debias", "zero-debias"),
    ("cumulative", "cumulative average"),
    ("batch_of_one", "training, 1 value/channel"),
    ("empty_batch", "empty batch"),
    ("half_moments", "half input: float32 moments"),
    ("float64", "float64 honoured"),
    ("variance_algorithm", "variance vs cancellation"),
    ("train_without_update", "batch stats without update"),
    ("training_gradient", "training dx through batch stats"),
    ("inference_gradient", "inference (frozen-layer) gradient"),
    ("replica_equal", "cross-replica, equal replicas"),
    ("replica_unequal", "cross-replica, unequal sizes"),
    ("replica_empty", "cross-replica, an empty replica"),
]


@dataclass
class ProfileCell:
    """One fact: ``value`` (whole sentences, never cut), ``evidence`` (case ids), ``status``
    measured / not measured. ``parts``: the value's pieces as (deviation kind, declared behaviour)
    or ("", plain text), so a page can show a short code for a long behaviour (and explain it in a
    legend) while ``value`` keeps the words; empty when the value is one plain piece."""

    value: str
    evidence: list[str] = field(default_factory=list)
    status: str = "not measured"
    parts: list[tuple[str, str]] = field(default_factory=list)

    def pieces(self) -> list[tuple[str, str]]:
        return self.parts or [("", self.value)]


def joined(parts) -> str:
    """The value of a cell made of (kind, text) parts: "kind: text" for a deviation, "; " between."""
    return "; ".join(f"{kind}: {text}" if kind else text for kind, text in parts)


def depends_on_variance(meta: dict) -> bool:
    """A case whose results depend on the running-variance kind and that updates from N >= 1 values
    (an update from an empty batch only, or none, pins nothing down)."""
    return "running_variance" in meta["depends_on"] and bool(meta["update_n"]) and meta["update_n"] != [0]


def ran_here(verdicts) -> bool:
    """False for a backend none of whose cells ran (pass, deviation, fail or error) while some were
    unavailable: its other cells can only be unsupported (settled from the declaration before the
    framework was asked), so nothing was measured and the reason is environmental."""
    statuses = {v["status"] for v in verdicts}
    return bool(statuses - {"unsupported", "unavailable"}) or "unavailable" not in statuses


def build_profile(document: dict) -> dict[str, dict[str, ProfileCell]]:
    """backend -> row key -> ProfileCell, for every backend that ran here (:func:`ran_here`): one
    whose runnable cells were all unavailable has no profile (its unsupported cells alone would
    read as "not expressible" everywhere)."""
    meta = document.get("case_meta", {})
    by_backend, every = collections.defaultdict(list), collections.defaultdict(list)
    for v in document["verdicts"]:
        every[v["adapter"]].append(v)
        if v["status"] != "unavailable" and v["case"] in meta:
            by_backend[v["adapter"]].append(v)
    profile = {}
    for name in sorted(n for n in by_backend if ran_here(every[n])):
        facts = _Facts(document["adapters"].get(name, {}), by_backend[name], meta)
        profile[name] = {key: getattr(facts, key)() for key, _ in ROWS}
    return profile


class _Facts:
    """The row computations for one backend (its cells, one per case: the first device that ran)."""

    def __init__(self, adapter: dict, verdicts: list[dict], meta: dict):
        self.adapter, self.meta = adapter, meta
        self.cells = {}
        for v in sorted(verdicts, key=lambda v: v["status"] not in RAN):  # prefer a device where it ran
            self.cells.setdefault(v["case"], v)
        self.behaviour = {d["name"]: d for d in adapter.get("deviations", [])}

    def _select(self, test) -> list[dict]:
        return [v for case, v in sorted(self.cells.items()) if test(self.meta[case])]

    # -- rows ---------------------------------------------------------------------------------

    def momentum(self) -> ProfileCell:
        """How the EMA knob is spelled and its default, verified by the plain EMA momentum cases."""
        cells = [v for v in self._select(lambda m: m["rule"] == "ema" and not m["zero_debias"] and not m["schedule"]
                                         and any(m["update_n"]))
                 if v["family"] == "momentum"]
        spelled = self._spelling()
        passing = [v["case"] for v in cells if v["status"] == "pass"]
        if not passing:
            return _unmeasured(spelled, cells)
        return ProfileCell(f"{spelled}; {len(passing)} EMA cases pass", passing, "measured")

    def _spelling(self) -> str:
        knob = self.adapter.get("decay_parameter")
        default = self.adapter.get("defaults", {}).get("decay_parameter")
        if not knob:
            return "no decay knob declared"
        name, weighs = knob
        decay = None if default is None else (1 - default if weighs == "new" else default)
        shown = "" if default is None else f" {default:g} (decay {decay:g})"
        return f"`{name}`{shown}, weight on {weighs} stat"

    def epsilon(self) -> ProfileCell:
        """Default epsilon (from the framework) and the placements whose dependent cases ran."""
        cells = self._select(lambda m: "epsilon_modes" in m["depends_on"])
        default = self.adapter.get("defaults", {}).get("epsilon")
        prefix = f"{default:g}, " if default is not None else "no default, "
        return self._by_value(cells, "epsilon_mode", _EPS_WORDS, prefix, both="any placement")

    def running_variance(self) -> ProfileCell:
        cells = self._select(depends_on_variance)
        switches = " when " in self.adapter.get("capabilities", {}).get("running_variance", "")
        return self._by_value(cells, "variance", {"bessel": "Bessel", "biased": "biased"}, "",
                              both="switches with path" if switches else "either (a parameter)")

    def zero_debias(self) -> ProfileCell:
        cells = self._select(lambda m: "zero_debias" in m["depends_on"] and m["update_n"])
        words = {True: "always", False: "never"}
        return self._by_value(cells, "zero_debias", words, "", both="optional")

    def cumulative(self) -> ProfileCell:
        return self._expressible(self._select(lambda m: m["rule"] == "cumulative"))

    def train_without_update(self) -> ProfileCell:
        return self._expressible(self._select(lambda m: "batch+no-update" in m["step_kinds"]))

    def batch_of_one(self) -> ProfileCell:
        cells = self._select(lambda m: 1 in m["training_n"] and not m["extensions"])
        return self._outcome(cells, "y = beta, var 0 (as model)")

    def empty_batch(self) -> ProfileCell:
        cells = self._select(lambda m: 0 in m["training_n"] and 0 in m["update_n"])
        return self._outcome(cells, "state unchanged", state=True)

    def half_moments(self) -> ProfileCell:
        cells = self._select(lambda m: m["input_dtype"] in HALF and not m["extensions"] and not _backward(m))
        return self._outcome(cells, "yes", kinds=("dtype", "precision", "defect"))

    def float64(self) -> ProfileCell:
        cells = self._select(lambda m: m["input_dtype"] == "float64" and m["param_dtype"] == "float64"
                             and not _backward(m))
        return self._outcome(cells, "yes", kinds=("dtype",))

    def variance_algorithm(self) -> ProfileCell:
        cells = self._select(lambda m: m["mean_to_spread"] >= CANCELLATION and not _backward(m))
        return self._outcome(cells, "exact (two-pass or Welford)", kinds=("precision", "defect"))

    def training_gradient(self) -> ProfileCell:
        """The gradients cases of training steps: dx through mu_B and var_B, dgamma, dbeta (N = 1 is
        the row "training, 1 value/channel")."""
        cells = self._select(lambda m: "batch" in _backward(m) and min(m["training_n"], default=2) > 1)
        return self._outcome(cells, "yes, as model")

    def inference_gradient(self) -> ProfileCell:
        """Inference steps' gradients: the affine map through the running statistics."""
        cells = self._select(lambda m: "running" in _backward(m))
        return self._outcome(cells, "running stats, affine (as model)")

    def replica_equal(self) -> ProfileCell:
        """Synchronized moments over equal replicas: the combination rule (means far apart, Bessel N)."""
        return self._replicas("equal", "moments of the union")

    def replica_unequal(self) -> ProfileCell:
        return self._replicas("unequal", "count-weighted (as model)")

    def replica_empty(self) -> ProfileCell:
        return self._replicas("empty", "contributes nothing (as model)")

    def _replicas(self, split: str, as_model: str) -> ProfileCell:
        cells = self._select(lambda m: split in m.get("replica_splits", []))
        return self._outcome(cells, as_model, state=True)

    # -- shared derivations ---------------------------------------------------------------------

    def _by_value(self, cells, knob: str, words: dict, prefix: str, both: str) -> ProfileCell:
        """The knob values whose dependent cases ran; ``both`` when every value did."""
        bad = _unexpected(cells)
        if bad:
            return bad
        ran = collections.defaultdict(list)
        for v in cells:
            if v["status"] in RAN:
                ran[self.meta[v["case"]][knob]].append(v["case"])
        if not ran:
            return _unmeasured(prefix + "no case ran", cells)
        values = sorted(ran, key=str)
        shown = both if len(values) == len(words) and len(words) > 1 else ", ".join(words.get(x, str(x)) for x in values)
        return ProfileCell(prefix + shown, [ran[x][0] for x in values], "measured")

    def _expressible(self, cells) -> ProfileCell:
        bad = _unexpected(cells)
        if bad:
            return bad
        ran = [v["case"] for v in cells if v["status"] in RAN]
        if ran:
            return ProfileCell(f"yes ({len(ran)} cases ran)", ran, "measured")
        return _unmeasured("no", cells)

    def _outcome(self, cells, as_model: str, kinds=None, state=False) -> ProfileCell:
        """``as_model`` when the cases pass, else what the observed deviations (of ``kinds``) do;
        ``state``: name the effect on the running state (counter skew, corrupted statistics)."""
        bad = _unexpected(cells)
        if bad:
            return bad
        ran = [v for v in cells if v["status"] in RAN]
        if not ran:
            return _unmeasured("not expressible", cells)
        found = collections.OrderedDict()
        for v in ran:
            for name, kind in zip(v.get("deviations", []), _kinds_of(v, self.behaviour)):
                if kinds is None or kind in kinds:
                    found.setdefault(name, []).append(v["case"])
        if not found:
            return ProfileCell(as_model, [v["case"] for v in ran if v["status"] == "pass"][:3], "measured")
        parts = list(dict.fromkeys(self._effect(name, state) for name in found))
        return ProfileCell(joined(parts), [cases[0] for cases in found.values()], "measured", parts)

    def _effect(self, name: str, state: bool) -> tuple[str, str]:
        """A deviation's declared (and re-verified) effect: ("", a short phrase) for a raise or an
        effect on the running state, else (its kind, its whole behaviour sentence)."""
        declared = self.behaviour.get(name, {})
        effect = declared.get("effect", {})
        if "raises" in effect:
            return "", f"raises {effect['raises']}"
        on_state = _state_effect(set(effect.get("outputs", [])), declared.get("kind", "?")) if state else None
        return ("", on_state) if on_state else (declared.get("kind", "?"), declared.get("behaviour", name))


def _backward(meta: dict) -> list[str]:
    """normalize_with of the case's steps with an upstream gradient (results before gradients: none)."""
    return meta.get("gradients", [])


def _state_effect(outputs: set, kind: str) -> str | None:
    """What a Mismatches declaration does to the running state, from the outputs it names."""
    running = {"running_mean", "running_var"} & outputs
    if outputs == {"num_updates"}:
        return "counter skew (state unchanged)"
    if "num_updates" in outputs and running:
        return "counter skew, later running stats wrong"
    if running and outputs <= running | {"y"}:
        return f"running stats corrupted ({kind})"
    return None


_EPS_WORDS = {"add_inside_sqrt": "inside sqrt", "add_outside_sqrt": "outside sqrt", "max_inside_sqrt": "max(var, eps)"}


def _kinds_of(v: dict, behaviour: dict) -> list[str]:
    """One kind per observed deviation name (from the adapter metadata; the cell's kinds are a set)."""
    return [behaviour.get(name, {}).get("kind", "?") for name in v.get("deviations", [])]


def _unexpected(cells) -> ProfileCell | None:
    bad = [v for v in cells if v["status"] in ("fail", "error")]
    if not bad:
        return None
    statuses = collections.Counter(v["status"] for v in bad)
    return ProfileCell("UNEXPECTED " + ", ".join(f"{n} {s}" for s, n in statuses.items()),
                       [v["case"] for v in bad], "measured")


def _unmeasured(value: str, cells) -> ProfileCell:
    return ProfileCell(value, [v["case"] for v in cells if v["status"] == "unsupported"][:3], "not measured")
