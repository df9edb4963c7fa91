"""Hand-written results documents (format 2) for the report and profile tests: every verdict and
every case property is written here, not produced by the code under test."""

from __future__ import annotations

from bnconform.reporting.results import RESULTS_FORMAT

FAMILIES = ("degenerate", "epsilon", "formulas", "momentum")


def case_meta(**changes) -> dict:
    """A plain float32 training case with one update of N = 4 whose results depend on the variance kind."""
    meta = {"input_dtype": "float32", "param_dtype": "float32", "rank": 2, "epsilon": 1e-5,
            "epsilon_mode": "add_inside_sqrt", "rule": "ema", "decay": 0.9, "variance": "bessel",
            "zero_debias": False, "schedule": False, "extensions": [], "training_n": [4], "update_n": [4],
            "step_kinds": ["batch+update"], "depends_on": ["running_variance"], "mean_to_spread": 0.5}
    meta.update(changes)
    return meta


def verdict(case: str, adapter: str, status: str = "pass", deviations=(), kinds=(), device: str = "cpu",
            detail: str = "", mismatches=()) -> dict:
    return {"case": case, "family": case.split("/")[0], "adapter": adapter, "device": device, "status": status,
            "detail": detail, "deviations": list(deviations), "kinds": list(kinds), "mismatches": list(mismatches),
            "compared": [], "seconds": 0.0, "version": "1.0"}


def deviation(name: str, kind: str, effect: dict, behaviour: str = "", link: str = "https://example.org/issue") -> dict:
    return {"name": name, "kind": kind, "applies_to": f"cells selected for {name}", "effect": effect,
            "behaviour": behaviour or f"{name} happens", "explanation": f"why {name} happens", "link": link}


def adapter(framework: str = "fw", version: str = "1.0", decay_parameter=("momentum", "new"), defaults=None,
            deviations=(), capabilities=None, unavailable=None) -> dict:
    return {"framework": framework, "version": version, "devices": ["cpu"], "doc": f"{framework} adapter",
            "notes": "", "decay_parameter": list(decay_parameter) if decay_parameter else None,
            "defaults": {"decay_parameter": 0.1, "epsilon": 1e-5} if defaults is None else defaults,
            "capabilities": capabilities or {"running_variance": "a Bessel-corrected running variance"},
            "deviations": list(deviations), "unavailable": unavailable}


def document(adapters: dict, metas: dict, verdicts: list) -> dict:
    return {"format": RESULTS_FORMAT, "runs": [{"date": "2026-01-01 00:00 UTC", "platform": "Linux-test",
                                                "machine": "x86_64", "python": "3.11.7", "bnconform": "0.1.0",
                                                "selection": {}}],
            "adapters": adapters, "cases": {c: f"what {c} pins down" for c in metas}, "case_meta": metas,
            "verdicts": verdicts}
