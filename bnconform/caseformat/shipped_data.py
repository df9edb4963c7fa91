"""Where the data bnconform ships lives: the golden vectors (``cases/``) and the backends written
in other languages (``backends/``: the C reference kernel, TensorFlow.js).

In a checkout, and in an editable install of one, they are the repository's own folders beside
the package. A wheel carries copies under ``bnconform/_data/`` (``setup.py``'s build step), so
``pip install bnconform`` is enough to run the suite from any directory. Nothing here writes:
reports go to the current directory (bnconform.reporting.writing), never beside these files.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]
SHIPPED = PACKAGE / "_data"  # filled in a wheel only


def data_dir(name: str) -> Path:
    """``bnconform/_data/<name>`` in an installed wheel, else ``<checkout>/<name>``."""
    shipped = SHIPPED / name
    return shipped if shipped.is_dir() else PACKAGE.parent / name


def shipped_cases() -> Path:
    """The golden vectors that came with this bnconform."""
    return data_dir("cases")


def shipped_backends() -> Path:
    """The folder holding the executable backends' folders (``c_reference``, ``tfjs``)."""
    return data_dir("backends")


def default_cases(directory: Path | None = None) -> Path:
    """``cases/`` of ``directory`` (the current one by default) when it holds case families (a
    checkout, or a project with vectors of its own), else the shipped vectors."""
    local = Path(directory or ".") / "cases"
    return local if local.is_dir() else shipped_cases()
