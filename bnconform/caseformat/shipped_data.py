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
    checkout, or a project with vectors of its own: :func:`holds_cases`), else the shipped vectors."""
    local = Path(directory or ".") / "cases"
    return local if holds_cases(local) else shipped_cases()


def holds_cases(folder: Path) -> bool:
    """Whether ``folder`` is a bnconform case root rather than a project's unrelated ``cases/``:
    its first ``<family>/<name>.json`` (in name order) opens as every case file does, with a
    ``"format_version"`` key first (caseformat.casefile writes it first). Only that file's first
    256 bytes are read; an empty folder, or one of other JSON, is not a case root."""
    if not folder.is_dir():
        return False
    first = next(iter(sorted(p for p in folder.glob("*/*.json") if p.name != "schema.json")), None)
    try:
        with open(first, "rb") as handle:
            head = handle.read(256).lstrip()
    except (TypeError, OSError):  # TypeError: no case file at all
        return False
    return head.startswith(b"{") and head[1:].lstrip().startswith(b'"format_version"')
