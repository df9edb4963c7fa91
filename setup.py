"""Packaging beyond pyproject.toml: a wheel carries the golden vectors and the executable backends.

The repository keeps ``cases/`` and ``backends/`` at its top level (so ``pytest cases/momentum``
reads naturally); a wheel needs them inside the package. The build step copies them to
``bnconform/_data/``, where bnconform.caseformat.shipped_data finds them. Editable installs skip
the copy: they read the checkout's own folders.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# (folder, glob patterns): only sources; never node_modules or a compiled kernel
SHIPPED = {
    "cases": ["**/*.json"],
    "backends/c_reference": ["bn.c", "bnconform-backend.json"],
    "backends/tfjs": ["*.js", "*.json"],
}


class BuildWithShippedData(build_py):
    """build_py, then the vectors and backend sources into build/lib/bnconform/_data/."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for folder, patterns in SHIPPED.items():
            for pattern in patterns:
                for source in sorted((ROOT / folder).glob(pattern)):
                    target = Path(self.build_lib) / "bnconform" / "_data" / source.relative_to(ROOT)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(source, target)


setup(cmdclass={"build_py": BuildWithShippedData})
