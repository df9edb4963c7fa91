"""Shim, kept while other work still runs ``python -m bnconform.inprocess``; remove once nothing
does. The module is bnconform.execution.inprocess."""

import sys

from .execution.inprocess import load_cases, main, run  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
