"""bnconform: a framework-agnostic conformance suite for Batch Normalization.

The package is the pipeline, one package per stage (each docstring says what it owns and what it
may import; tests/test_layout.py keeps imports pointing one way)::

    caseformat -> reference -> judging -> specs -> adapters -> execution -> reporting -> interfaces

Importing this package imports no ML framework: adapters are loaded lazily by name
(see :mod:`bnconform.adapters.registry`). Module paths from before the stage packages
(``bnconform.model``, ``bnconform.judge``, ...) still import, with a DeprecationWarning naming
the new place.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__version__ = "0.1.0"

# Old module path -> where it lives now (the move to stage packages, version 0.1.0).
MOVED_MODULES = {
    "model": "caseformat.model", "dtypes": "caseformat.dtypes", "encoding": "caseformat.encoding",
    "schema_check": "caseformat.schema_check", "validation": "caseformat.validation",
    "casefile": "caseformat.casefile", "oracle": "reference.oracle", "oracle_gradients": "reference.gradients",
    "tolerance": "reference.tolerance", "verdict": "judging.verdict", "compare": "judging.compare",
    "selectors": "judging.selectors", "capabilities": "judging.capabilities", "judge": "judging.judge",
    "generate": "specs.generate", "authoring": "specs.authoring", "selection": "execution.selection",
    "results": "reporting.results", "reports_io": "reporting.writing", "profile": "reporting.profile",
    "heatmap": "reporting.pages.heatmap", "report": "reporting.pages", "report.common": "reporting.pages.common",
    "report.details": "reporting.pages.details", "report.findings": "reporting.pages.findings",
    "report.main": "reporting.pages.main", "cli": "interfaces.cli", "commands": "interfaces.subcommands",
    "usage": "interfaces.usage", "pytest_plugin": "interfaces.pytest_plugin",
    "xdist_scheduling": "interfaces.xdist_scheduling", "bench": "interfaces.bench", "fuzz": "interfaces.fuzz",
    "fuzz_space": "interfaces.fuzz_space", "port": "interfaces.port", "listing": "interfaces.listing",
}


class _MovedModule(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers ``import bnconform.<old path>`` with the module at its new path (the same object)."""

    def find_spec(self, name, path=None, target=None):
        old = name.partition("bnconform.")[2] if name.startswith("bnconform.") else ""
        if old not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(name, self)

    real_specs: dict = {}  # new name -> the module's own spec, which the import system overwrites

    def create_module(self, spec):
        new = f"{__name__}.{MOVED_MODULES[spec.name.partition('.')[2]]}"
        warnings.warn(f"{spec.name} moved to {new}; import it from there", DeprecationWarning, stacklevel=2)
        module = importlib.import_module(new)
        self.real_specs.setdefault(new, module.__spec__)
        return module

    def exec_module(self, module):
        module.__spec__ = self.real_specs[module.__name__]  # the same module object, its own spec again


# First in line: the path finder would otherwise load bnconform.report.main a second time, from the
# moved package's __path__, as a module of its own.
if not any(type(finder).__name__ == "_MovedModule" for finder in sys.meta_path):
    sys.meta_path.insert(0, _MovedModule())
