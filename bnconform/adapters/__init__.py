"""Adapters: one module per framework API, each exposing one :class:`~.base.Adapter` subclass,
grouped by framework family (``torch/``, ``tensorflow/``, ``jax/``) with shared helpers beside them.

Everything an adapter author needs is importable from here. Nothing here imports a framework;
see :mod:`bnconform.adapters.registry` for the lazy table.
"""

from ..capabilities import ALL_DTYPES, Capabilities, dtype_pairs
from ..selectors import Selector, where
from .base import Adapter, Deviation, MatchesVariant, Mismatches, Raises, Unsupported, variant

__all__ = ["ALL_DTYPES", "Adapter", "Capabilities", "Deviation", "MatchesVariant", "Mismatches", "Raises", "Selector",
           "Unsupported", "dtype_pairs", "variant", "where"]
