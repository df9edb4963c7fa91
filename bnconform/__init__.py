"""bnconform: a framework-agnostic conformance suite for Batch Normalization.

Importing this package imports no ML framework: adapters are loaded lazily by name
(see :mod:`bnconform.adapters.registry`).
"""

__version__ = "0.1.0"
