"""Hypothesis strategies that mutate a real input file, for the input fuzz tests.

``mutated_text``: cut the text at any point, splice junk into it, or drop a slice of it.
``mutated_json_text``: parse, then at one random place replace a value with one of NASTY (a NaN
where an integer belongs, a huge shape, deep nesting, a wrong type), delete it, wrap it in a list
or duplicate it; serialize again (NaN and Infinity as Python's json writes them).
"""

from __future__ import annotations

import copy
import json

from hypothesis import strategies as st

NASTY = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["nan", "inf", "", "0x1p+0", "float16", "batch", "cpu", "\u0000"]),
    st.just([]), st.just({}), st.lists(st.integers(-3, 3), max_size=4), st.just([10**9, 10**9]),
    st.just([[[[[[[[[[0]]]]]]]]]]), st.just({"hex": ["0x1p+0"], "shape": [1], "dtype": "float32"}),
)


@st.composite
def mutated_text(draw, text: str) -> str:
    """``text`` cut, spliced or with a slice dropped, at places drawn anywhere in it."""
    at = draw(st.integers(0, len(text)))
    action = draw(st.sampled_from(["cut", "splice", "drop"]))
    if action == "cut":
        return text[:at]
    if action == "splice":
        return text[:at] + draw(st.text(min_size=1, max_size=8)) + text[at:]
    return text[:at] + text[at + draw(st.integers(1, 200)):]


@st.composite
def mutated_json_text(draw, text: str) -> str:
    """``text`` (JSON) with one value changed at a random place, serialized again."""
    document = copy.deepcopy(json.loads(text))
    parent, key, node = None, None, document
    for _ in range(draw(st.integers(0, 8))):
        if isinstance(node, dict) and node:
            step = draw(st.sampled_from(sorted(node)))
        elif isinstance(node, list) and node:
            step = draw(st.integers(0, len(node) - 1))
        else:
            break
        parent, key, node = node, step, node[step]
    action = draw(st.sampled_from(["replace", "delete", "wrap", "duplicate"]))
    if parent is None:
        return json.dumps(draw(NASTY)) if action == "replace" else json.dumps(document)
    if action == "replace":
        parent[key] = draw(NASTY)
    elif action == "delete":
        del parent[key]
    elif action == "wrap":
        parent[key] = [node]
    elif isinstance(parent, list):
        parent.insert(key, copy.deepcopy(node))
    else:
        parent[f"{key}_copy"] = copy.deepcopy(node)  # an unknown field beside a known one
    return json.dumps(document)
