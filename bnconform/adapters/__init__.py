"""Stage 5, adapters: one module per framework API, each exposing one :class:`~.base.Adapter` subclass,
grouped by framework family (``torch/``, ``tensorflow/``, ``jax/``) with shared helpers beside them.

Everything an adapter author needs is importable from here. Nothing here imports a framework;
see :mod:`bnconform.adapters.registry` for the lazy table.

May import: case format, reference (the oracle adapter), judging (the vocabulary an adapter
declares itself in: capabilities, selectors, deviations).
"""

from ..caseformat.model import Case
from ..judging.capabilities import ALL_DTYPES, Capabilities, dtype_pairs
from ..judging.selectors import (ANY, Selector, affine_partly_off, case_in, device_in, epsilon_zero, input_dtype_in,
                                 mean_far_from_spread, param_dtype_in, rank_in, resumes_from_count, running_variance_is,
                                 squares_overflow, training_step, training_without_update, updates_in_inference,
                                 updates_on_empty_batch, updates_running_stats, uses_extension, where)
from .base import Adapter, Deviation, MatchesVariant, Mismatches, Raises, Unsupported, variant

__all__ = ["ALL_DTYPES", "ANY", "Adapter", "Capabilities", "Case", "Deviation", "MatchesVariant", "Mismatches", "Raises",
           "Selector", "Unsupported", "affine_partly_off", "case_in", "device_in", "dtype_pairs", "epsilon_zero",
           "input_dtype_in", "mean_far_from_spread", "param_dtype_in", "rank_in", "resumes_from_count",
           "running_variance_is", "squares_overflow", "training_step", "training_without_update",
           "updates_in_inference", "updates_on_empty_batch", "updates_running_stats", "uses_extension", "variant",
           "where"]
