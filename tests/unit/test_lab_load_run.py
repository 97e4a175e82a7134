"""`workbench.load_run`: a run folder's results for a notebook (the Lab panel's "open in notebook")."""

from __future__ import annotations

import pytest

import workbench
from workbench.errors import WorkbenchError
from workbench.results import GenericResult
from workbench.runs import RunFolder


@pytest.mark.filterwarnings("ignore:no installed package provides result kind")
def test_load_run_gives_the_results_of_a_complete_run(tmp_path):
    provenance = {"model": {"name": "m"}, "data": {}, "definition": "d"}
    saved = [
        GenericResult.from_dict({"kind": k, "n": i, "provenance": provenance}) for i, k in enumerate("ab")
    ]
    RunFolder.create(tmp_path / "run", "t", "workbench t").save(saved)
    results = workbench.load_run(tmp_path / "run")
    assert [r.kind for r in results] == ["a", "b"] and [r.body["n"] for r in results] == [0, 1]
    assert workbench.load_run(str(tmp_path / "run"))[0].to_dict() == saved[0].to_dict()


def test_load_run_refuses_a_run_that_is_not_complete(tmp_path):
    running = RunFolder.create(tmp_path / "run", "t", "workbench t")
    with pytest.raises(WorkbenchError, match="still running"):
        workbench.load_run(tmp_path / "run")
    running._abandon()
    with pytest.raises(WorkbenchError, match="not a run folder"):
        workbench.load_run(tmp_path / "nothing")
