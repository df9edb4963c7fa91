"""Shim: ``python -m bnconform.worker module:Class`` still serves one adapter; remove once nothing
runs it. The module is bnconform.execution.host."""

import sys

from .execution.host import serve

if __name__ == "__main__":
    serve(sys.argv[1:])
