"""Adapters: one module per framework API, each exposing one :class:`~.base.Adapter` subclass.

Nothing here imports a framework; see :mod:`bnconform.adapters.registry` for the lazy table.
"""

from .base import Adapter, Deviation, MatchesVariant, Mismatches, Raises, Unsupported

__all__ = ["Adapter", "Deviation", "MatchesVariant", "Mismatches", "Raises", "Unsupported"]
