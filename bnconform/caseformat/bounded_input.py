"""Reading files a user hands in (case files, readable descriptions) within fixed bounds.

A file larger than MAX_INPUT_BYTES is refused before it is read (the largest shipped case file is
~280 KB). YAML aliases are where a small file becomes a large one: ``row: &r [0, ...]`` and
``x: [*r, *r, ...]`` make a 70 KB description of a 10000 x 10000 array, which PyYAML builds as
shared references but everything after it (decimals to float64, the oracle) expands. So a YAML
document is composed into its node graph first (an alias is the same node again, so this stays as
small as the text), the values it would expand to are counted through that graph, and only a
document of at most MAX_DESCRIPTION_VALUES scalars is constructed.
"""

from __future__ import annotations

from pathlib import Path

MAX_INPUT_BYTES = 64 * 2**20
MAX_DESCRIPTION_VALUES = 1_000_000  # scalars a readable description may expand to (a hand-written case has ~100s)


class InputTooLarge(ValueError):
    """The message is one line: what was too large, the bound and what was found."""


def size_problem(size: int, limit: int = MAX_INPUT_BYTES, what: str = "a file") -> str | None:
    """"Expected: <what> of at most N MiB. Received: M MiB" for a size over ``limit``, else None."""
    if size <= limit:
        return None
    return f"Expected: {what} of at most {limit // 2**20} MiB. Received: {size / 2**20:.1f} MiB"


def read_text(path: Path, limit: int = MAX_INPUT_BYTES) -> str:
    """The UTF-8 text of ``path``, refused (InputTooLarge) before reading when over ``limit`` bytes."""
    problem = size_problem(Path(path).stat().st_size, limit)
    if problem:
        raise InputTooLarge(problem)
    return Path(path).read_text(encoding="utf-8")


def load_yaml(text: str, max_values: int = MAX_DESCRIPTION_VALUES):
    """``yaml.safe_load(text)``, refused (InputTooLarge) when its aliases would expand it beyond
    ``max_values`` scalars, and before anything is built."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        found = _expanded_scalars(node, max_values, {})
        if found > max_values:
            raise InputTooLarge(f"Expected: at most {max_values:,} values once YAML aliases are expanded. "
                                f"Received: more than {max_values:,}")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _expanded_scalars(node, limit: int, memo: dict) -> int:
    """Scalars under ``node`` with every alias expanded, counted once per distinct node (aliases
    share their node) and cut off above ``limit``; InputTooLarge for a node inside itself."""
    key = id(node)
    if key in memo:
        if memo[key] is None:  # still being counted: the alias sits inside its own anchor
            raise InputTooLarge("Expected: YAML aliases that refer to finished nodes. Received: an alias inside "
                                "its own anchor (it would expand without end)")
        return memo[key]
    memo[key] = None
    if hasattr(node.value, "__iter__") and not isinstance(node.value, str):
        children = [c for pair in node.value for c in (pair if isinstance(pair, tuple) else (pair,))]
        total = 0
        for child in children:
            total += _expanded_scalars(child, limit, memo)
            if total > limit:
                break
    else:
        total = 1
    memo[key] = total
    return total


def count_values(obj, limit: int = MAX_DESCRIPTION_VALUES) -> int:
    """Scalars in a parsed JSON object (no aliases there), cut off above ``limit``."""
    stack, total = [obj], 0
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, dict):
            stack += [*item.keys(), *item.values()]
        elif isinstance(item, list):
            stack += item
        else:
            total += 1
    return total
