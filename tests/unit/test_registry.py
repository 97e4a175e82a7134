import pytest

from workbench.errors import WorkbenchError
from workbench.registry import Registry


def test_lookup_and_listing():
    reg: Registry[int] = Registry("thing", how_to_add="Add one with register().")
    reg.register("alpha", 1)
    reg.decorator("beta")(2)
    assert reg.get("alpha") == 1 and reg.names() == ["alpha", "beta"] and "beta" in reg


def test_unknown_name_lists_known_names_and_how_to_add():
    reg: Registry[int] = Registry("thing", how_to_add="Add one with register().")
    reg.register("alpha", 1)
    with pytest.raises(WorkbenchError, match=r"Unknown thing 'alpah'.*Did you mean 'alpha'.*register\(\)"):
        reg.get("alpah")


def test_duplicate_registration_is_refused():
    reg: Registry[int] = Registry("thing")
    reg.register("a", 1)
    with pytest.raises(ValueError):
        reg.register("a", 2)
