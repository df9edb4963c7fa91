"""Write the malformed case files in this folder, each a real case broken in exactly ONE way.

Every fixture starts from a real generated case (``BASE``, small: one training step on an 8x3
float32 input), so everything but the one broken field stays realistic and the validator has to
find that field. ``BREAKAGES`` lists, per file, the JSON location its error line must name and
the change. tests/test_validation.py checks that each file fails with that location and that the
committed files are exactly what this script writes, so after changing it run, from the
repository root::

    .venv/bin/python tests/malformed/make_malformed.py
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Callable, NamedTuple

HERE = Path(__file__).resolve().parent
BASE = HERE.parent.parent / "cases" / "formulas" / "rank2_nc_train.json"


class Breakage(NamedTuple):
    name: str        # file name without .json
    location: str    # the JSON location (or line/column) the one error line must name
    change: Callable  # obj -> None (edits in place), or obj -> str for text-level damage


def _set(path: str, value) -> Callable:
    """Set the field at a slash path like "config/running_stats/decay" (list indices as digits)."""
    *parents, last = [int(p) if p.isdigit() else p for p in path.split("/")]

    def change(obj):
        for key in parents:
            obj = obj[key]
        obj[last] = value
    return change


def _delete(path: str) -> Callable:
    *parents, last = path.split("/")

    def change(obj):
        for key in parents:
            obj = obj[int(key) if key.isdigit() else key]
        del obj[last]
    return change


def _both(*changes: Callable) -> Callable:
    def change(obj):
        for one in changes:
            one(obj)
    return change


def _drop_last_hex(obj):
    obj["steps"][0]["x"]["hex"].pop()


def _two_channel_gamma(obj):
    gamma = obj["initial_state"]["gamma"]
    gamma.update(shape=[2], hex=gamma["hex"][:2], approx=gamma["approx"][:2])


def _scalar_gamma(obj):
    gamma = obj["initial_state"]["gamma"]
    gamma.update(shape=[], hex=gamma["hex"][:1], approx=gamma["approx"][:1])


def _double_comma(obj) -> str:
    return render(obj).replace('"scale": true,', '"scale": true,,', 1)


def _not_an_object(obj) -> str:
    return "[]\n"


BREAKAGES = [
    Breakage("invalid_json", "line 11 column 19", _double_comma),
    Breakage("not_an_object", "/", _not_an_object),
    Breakage("wrong_format_version", "/format_version", _set("format_version", 2)),
    Breakage("unknown_field", "/config", _set("config/momentum", 0.1)),
    Breakage("unknown_dtype", "/steps/0/x/dtype", _set("steps/0/x/dtype", "float8")),
    Breakage("x_dtype_not_input_dtype", "/steps/0/x/dtype", _set("steps/0/x/dtype", "float64")),
    Breakage("bad_hex_string", "/steps/0/x/hex/3", _set("steps/0/x/hex/3", "0x1.zzp+0")),
    Breakage("hex_not_a_string", "/steps/0/x/hex/4", _set("steps/0/x/hex/4", 1.5)),
    Breakage("hex_beyond_float64", "/steps/0/x/hex/5", _set("steps/0/x/hex/5", "0x1p+2000")),
    Breakage("not_representable_in_dtype", "/initial_state/gamma/hex/0",
              _set("initial_state/gamma/hex/0", "0x1.0000000001p+0")),
    Breakage("hex_count_not_shape", "/steps/0/x/hex", _drop_last_hex),
    Breakage("nan_literal", "/config/epsilon", _set("config/epsilon", float("nan"))),
    Breakage("gamma_channel_mismatch", "/initial_state/gamma/shape", _two_channel_gamma),
    Breakage("gamma_scalar", "/initial_state/gamma/shape", _scalar_gamma),
    Breakage("channel_axis_beyond_rank", "/config/channel_axis", _set("config/channel_axis", 2)),
    Breakage("channel_axis_float", "/config/channel_axis", _set("config/channel_axis", 1.0)),
    Breakage("rank6", "/steps/0/x/shape", _set("steps/0/x/shape", [8, 3, 1, 1, 1, 1])),
    # (an omitted output is allowed: not compared) but the update knobs of an updating case are required
    Breakage("missing_running_stats_with_update", "/config/running_stats", _delete("config/running_stats")),
    Breakage("missing_step", "/steps", _set("steps", [])),
    Breakage("batch_mean_null_in_training", "/steps/0/expected/batch_mean",
              _set("steps/0/expected/batch_mean", None)),
    Breakage("missing_tolerance_entry", "/steps/0/tolerance", _delete("steps/0/tolerance/y")),
    Breakage("decay_above_one", "/config/running_stats/decay", _set("config/running_stats/decay", 1.5)),
    Breakage("cumulative_with_decay", "/config/running_stats/decay", _set("config/running_stats/rule", "cumulative")),
    Breakage("zero_debias_resumed", "/initial_state/num_updates",
              _both(_set("config/running_stats/zero_debias", True), _set("initial_state/num_updates", 3))),
]


def render(obj) -> str:
    """Two-space JSON; NaN is written as the (invalid) literal on purpose where a fixture has one."""
    return json.dumps(obj, indent=2) + "\n"


def fixture_text(breakage: Breakage) -> str:
    obj = copy.deepcopy(json.loads(BASE.read_text(encoding="utf-8")))
    result = breakage.change(obj)
    return result if isinstance(result, str) else render(obj)


def write_all() -> list[Path]:
    """Write every fixture and delete .json files in this folder that no breakage produces."""
    written = []
    for breakage in BREAKAGES:
        path = HERE / f"{breakage.name}.json"
        path.write_text(fixture_text(breakage), encoding="utf-8")
        written.append(path)
    for stale in set(HERE.glob("*.json")) - set(written):
        stale.unlink()
    return written


if __name__ == "__main__":
    print(f"wrote {len(write_all())} malformed cases under {HERE}")
