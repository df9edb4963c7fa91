"""What an outside adapter author meets: names of their own, their own install hint."""

from __future__ import annotations

import sys
import types

import pytest

from bnconform.adapters import Adapter
from bnconform.adapters.numpy_oracle import OracleAdapter
from bnconform.adapters.registry import RegistryError, load_class


def _module_with(**classes):
    module = types.ModuleType("authoring_example")
    for name, cls in classes.items():
        setattr(module, name, cls)
    sys.modules[module.__name__] = module
    return module


def test_a_subclass_that_inherits_its_parents_name_is_refused():
    class Tweaked(OracleAdapter):  # forgot `name`: its verdicts would merge with numpy.oracle's
        pass

    class Named(OracleAdapter):
        name = "my.oracle"

    _module_with(Tweaked=Tweaked, Named=Named)
    with pytest.raises(RegistryError, match=r"Expected: a class attribute `name` of its own. Received: inherited 'numpy.oracle'"):
        load_class("authoring_example:Tweaked")
    assert load_class("authoring_example:Named") is Named


def test_a_plugin_names_its_own_install_command():
    class Plugin(Adapter):
        name, extra, requires = "mybn", "mybn", ("no_such_module_for_bnconform_tests",)
        install_hint = "pip install mybn-bnconform"

    class Builtin(Adapter):
        name, extra, requires = "x", "torch", ("no_such_module_for_bnconform_tests",)

    assert Plugin().unavailable_reason().endswith("install it with: pip install mybn-bnconform")
    assert "bnconform[mybn]" not in Plugin().unavailable_reason()
    assert Builtin().unavailable_reason().endswith("pip install 'bnconform[torch]'")
