"""Result kinds are found through the `workbench.results` entry-point group: a kind a package declares there
round-trips through a run folder, a kind nobody declares loads as a generic result, and results are built
by keyword."""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import sys
import textwrap
from pathlib import Path

import pytest

import workbench
from workbench.report import write_report
from workbench.results import (
    RESULT_ENTRY_POINTS,
    RESULT_KINDS,
    GenericResult,
    Provenance,
    Result,
    load_result_kind,
    result_entry_points,
    result_kinds,
)
from workbench.runs import RunFolder, read_run

PLUGIN = "wb_fake_results_plugin"
PLUGIN_SOURCE = """
from dataclasses import dataclass

import pandas as pd

from workbench.results import Provenance, Result, register_result


@register_result
@dataclass(kw_only=True)
class FakeResult(Result):
    kind = "fake_kind"
    title = "A kind a third-party package adds"

    model: str
    scores: list[float]
    provenance: Provenance

    def table(self) -> pd.DataFrame:
        return pd.DataFrame({"score": self.scores}).assign(model=self.model)
"""


def install_plugin(site: Path, entries: dict[str, str], source: str = PLUGIN_SOURCE) -> None:
    """A package installed the way pip leaves one: its module and a dist-info folder with entry points."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{PLUGIN}.py").write_text(textwrap.dedent(source))
    info = site / f"{PLUGIN}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PLUGIN}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entries.items())
    (info / "entry_points.txt").write_text(f"[{RESULT_ENTRY_POINTS}]\n{lines}")


@pytest.fixture
def fresh_kinds(monkeypatch):
    """The kinds registry as it is now, restored afterwards; the plugin module forgotten before and after."""
    monkeypatch.setattr(RESULT_KINDS, "_entries", dict(RESULT_KINDS._entries))
    sys.modules.pop(PLUGIN, None)
    yield
    sys.modules.pop(PLUGIN, None)


def provenance() -> Provenance:
    return Provenance(model={"name": "m"}, data={"tokens": 3}, definition="a test measurement", seed=1)


def test_a_kind_declared_by_an_entry_point_round_trips_through_a_run_folder(
    tmp_path, monkeypatch, fresh_kinds
):
    install_plugin(tmp_path / "site", {"fake_kind": f"{PLUGIN}:FakeResult"})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    # Listed from the installed metadata alone, before anything imports the plugin.
    assert "fake_kind" in result_kinds() and PLUGIN not in sys.modules
    cls = load_result_kind("fake_kind")
    assert cls is not None and cls.__module__ == PLUGIN and RESULT_KINDS.get("fake_kind") is cls
    result = cls(model="m", scores=[0.25, 0.5], provenance=provenance())
    run = RunFolder.create(tmp_path / "run", "fake", "workbench fake")
    run.save([result])

    # A fresh process: the plugin not imported, its kind not registered; reading the folder finds it.
    sys.modules.pop(PLUGIN, None)
    del RESULT_KINDS._entries["fake_kind"]
    (back,) = read_run(run.path).results
    assert type(back).__name__ == "FakeResult" and type(back) is not cls  # imported anew by the reader
    assert back.to_dict() == result.to_dict()
    assert back.table()["score"].tolist() == [0.25, 0.5]
    assert "A kind a third-party package adds" in write_report(run.path).read_text()


def test_an_unknown_kind_loads_as_a_generic_result_with_its_json_kept(tmp_path, fresh_kinds):
    data = {
        "kind": "no_such_kind",
        "model": "m",
        "score": 1.5,
        "rows": [{"layer": 0, "value": 2}],
        "provenance": dataclasses.asdict(provenance()) | {"extra_field": "kept"},
    }
    run = RunFolder.create(tmp_path / "run", "x", "workbench x")
    run.save([GenericResult.from_dict(data)])
    assert json.loads((run.path / "results.json").read_text())["results"] == [data]
    with pytest.warns(UserWarning, match="no_such_kind.*generic"):
        (back,) = read_run(run.path).results
    assert isinstance(back, GenericResult) and back.kind == "no_such_kind"
    assert back.to_dict() == data and back.provenance.definition == "a test measurement"
    table = back.table()
    assert table["field"].tolist() == ["model", "score", "rows"]
    assert table["value"].tolist() == ["m", 1.5, json.dumps([{"layer": 0, "value": 2}])]
    with pytest.warns(UserWarning):
        assert "no_such_kind" in write_report(run.path).read_text()


def test_a_broken_entry_point_reads_generically_rather_than_failing(tmp_path, monkeypatch, fresh_kinds):
    broken = "raise ImportError('x')\n"
    install_plugin(tmp_path / "site", {"fake_kind": f"{PLUGIN}:FakeResult"}, source=broken)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    data = {"kind": "fake_kind", "scores": [1.0], "provenance": dataclasses.asdict(provenance())}
    with pytest.warns(UserWarning, match="failed to load"):
        assert load_result_kind("fake_kind") is None
    run = RunFolder.create(tmp_path / "run", "x", "workbench x")
    run.save([GenericResult.from_dict(data)])
    with pytest.warns(UserWarning):
        (back,) = read_run(run.path).results
    assert isinstance(back, GenericResult) and back.to_dict() == data


def test_every_kind_of_the_workbench_is_declared_as_an_entry_point():
    """Each module's @register_result classes are named in pyproject.toml's entry points (and installed)."""
    root = Path(workbench.__file__).parent
    modules = [
        "workbench." + ".".join(p.relative_to(root).with_suffix("").parts)
        for p in sorted(root.rglob("*.py"))
        if re.search(r"^@register_result$", p.read_text(), re.M)
    ]
    assert len(modules) >= 10
    for module in modules:
        importlib.import_module(module)
    declared = result_entry_points()
    assert set(RESULT_KINDS.names()) <= set(declared), "add the missing kinds to pyproject.toml and reinstall"
    for kind in RESULT_KINDS.names():
        assert declared[kind].load() is RESULT_KINDS.get(kind)
    pyproject = (root.parent / "pyproject.toml").read_text()
    section = pyproject.split(f'[project.entry-points."{RESULT_ENTRY_POINTS}"]')[1].split("\n[")[0]
    assert set(re.findall(r"^(\w+) = ", section, re.M)) == set(RESULT_KINDS.names())


def test_results_are_built_by_keyword():
    from workbench.replay.session import ReplayResult

    with pytest.raises(TypeError):
        ReplayResult("m", [], 0, 1, 0.0, 0.0, 0.0, 0.0, 1.0, [], [], 0.0, 0.0, 0.0, provenance())
    with pytest.raises(TypeError):
        Provenance({}, {}, "definition")
    kinds = [cls for cls in map(RESULT_KINDS.get, RESULT_KINDS.names()) if issubclass(cls, Result)]
    assert all(f.kw_only for cls in kinds for f in dataclasses.fields(cls))
