"""A package's lazy names (PEP 562) stay what they say after their modules are imported: a function named
like its own module (`essential.sweep` in `essential/sweep.py`) would be shadowed by the module object once
anything imports the module, and `from workbench.essential import sweep` would return a module."""

from __future__ import annotations

import importlib
import types

import pytest

LAZY_PACKAGES = ("workbench.sparsity", "workbench.essential", "workbench.widgets")


@pytest.mark.parametrize("name", LAZY_PACKAGES)
def test_no_lazy_name_is_shadowed_by_a_module(name):
    package = importlib.import_module(name)
    for attribute in package.__all__:
        getattr(package, attribute)  # imports every module behind the names
    shadowed = [a for a in package.__all__ if isinstance(getattr(package, a), types.ModuleType)]
    assert shadowed == [], f"{name}: these names resolve to modules, rename the module: {shadowed}"
