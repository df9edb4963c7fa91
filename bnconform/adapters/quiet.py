"""Keeping what exporters, converters and runtimes print off the user's terminal (issue 22: their
warnings reach the user only when asked for). They print from C++ too, below Python's sys.stderr,
so redirecting Python's streams is not enough: the process's descriptors 1 and 2 go to /dev/null.
``BNCONFORM_NATIVE_OUTPUT=1`` in the environment asks for that output: nothing is silenced."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings

ASK = "BNCONFORM_NATIVE_OUTPUT"


@contextlib.contextmanager
def silenced(loggers: tuple[str, ...]):
    """Descriptors 1 and 2 on /dev/null, Python warnings ignored and ``loggers`` at ERROR for the
    duration; everything restored after, also when the body raises. A no-op when the user asked for
    the output (``BNCONFORM_NATIVE_OUTPUT=1``)."""
    if os.environ.get(ASK) == "1":
        yield
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved, null = [os.dup(1), os.dup(2)], os.open(os.devnull, os.O_WRONLY)
    levels = {name: logging.getLogger(name).level for name in loggers}
    try:
        os.dup2(null, 1), os.dup2(null, 2)
        for name in loggers:
            logging.getLogger(name).setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
