"""The runs index: which folders are runs, their rows (damaged ones too), filters and orders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from workbench.lab.index import NotReady, RunsIndex, filter_rows, find_run_folders, sort_rows
from workbench.lab.paths import Forbidden, NotFound
from workbench.results import GenericResult
from workbench.runs import RunFolder

pytestmark = pytest.mark.filterwarnings("ignore:no installed package provides result kind")


def generic(kind: str, **fields) -> GenericResult:
    provenance = {"model": {"name": "made-up"}, "data": {}, "definition": "made up"}
    return GenericResult.from_dict({"kind": kind, **fields, "provenance": provenance})


def complete(folder: Path, kind: str = "lab_a", command: str = "workbench lab_a", **fields) -> Path:
    RunFolder.create(folder, "t", command).save([generic(kind, **fields)])
    return folder


def test_run_folders_are_found_nested_and_hidden_or_linked_ones_are_not(tmp_path):
    complete(tmp_path / "a")
    complete(tmp_path / "group" / "b")
    complete(tmp_path / "group" / "deeper" / "c")
    complete(tmp_path / "1" / "2" / "3" / "too-deep")
    complete(tmp_path / ".jobs" / "hidden")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "heartbeat.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "a", target_is_directory=True)
    complete(tmp_path / "a" / "inside-a-run")  # a run folder's own subfolders are not searched
    found = [p.relative_to(tmp_path).as_posix() for p in find_run_folders(tmp_path)]
    assert found == ["a", "group/b", "group/deeper/c", "half"]
    assert find_run_folders(tmp_path / "missing") == []


def test_rows_of_complete_running_failed_and_damaged_runs(tmp_path):
    complete(tmp_path / "done", score=0.25, note="x" * 80)
    running = RunFolder.create(tmp_path / "running", "t", "workbench capture --model=tiny-moe")
    (tmp_path / "running" / "progress.json").write_text(json.dumps({"phase": "capture", "done": 5}))
    failed = RunFolder.create(tmp_path / "failed", "t", "workbench lab_a")
    with pytest.raises(RuntimeError), failed:
        raise RuntimeError("out of luck")
    (tmp_path / "gone").mkdir()
    dead = {"format": "workbench-run/1", "status": "running", "command": "workbench x", "pid": 2**22 + 12345,
            "host": os.uname().nodename, "created": "2026-01-01T00:00:00+00:00"}  # fmt: skip
    (tmp_path / "gone" / "manifest.json").write_text(json.dumps(dead))
    (tmp_path / "gone" / "heartbeat.json").write_text(json.dumps({"time": 0, "interval_s": 5}))
    (tmp_path / "lying").mkdir()
    (tmp_path / "lying" / "manifest.json").write_text(json.dumps({"status": "complete", "command": "x"}))
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "manifest.json").write_text(json.dumps({"status": "paused"}))

    rows = {row["id"]: row for row in RunsIndex(tmp_path).rows()}
    assert rows["done"]["status"] == "complete" and rows["done"]["headline"] == {"score": 0.25}
    assert rows["done"]["kinds"] == ["lab_a"] and rows["done"]["model"] == "made-up"
    assert rows["running"]["status"] == "running" and rows["running"]["model"] == "tiny-moe"
    assert rows["running"]["progress"]["done"] == 5 and rows["running"]["progress"]["phase"] == "capture"
    assert rows["failed"]["status"] == "failed" and "out of luck" in rows["failed"]["error"]
    assert rows["gone"]["status"] == "interrupted"
    assert rows["lying"]["status"] == "unreadable" and "results.json" in rows["lying"]["error"]
    assert rows["odd"]["status"] == "unreadable" and "paused" in rows["odd"]["error"]
    running.save([generic("lab_a")])


def test_reading_a_run_again_only_after_its_files_change(tmp_path, monkeypatch):
    complete(tmp_path / "a", score=1)
    index = RunsIndex(tmp_path)
    reads = []
    import workbench.runs

    original = workbench.runs.read_run
    monkeypatch.setattr(workbench.runs, "read_run", lambda path: reads.append(path) or original(path))
    assert index.rows()[0]["headline"] == {"score": 1}
    assert index.rows()[0]["headline"] == {"score": 1}
    assert len(reads) == 1
    complete(tmp_path / "a", score=2)  # the same folder, written again
    assert index.rows()[0]["headline"] == {"score": 2} and len(reads) == 2


def test_only_the_latest_runs_are_kept_whole(tmp_path, monkeypatch):
    complete(tmp_path / "a", score=1)
    complete(tmp_path / "b", score=2)
    index = RunsIndex(tmp_path, keep_runs=1)
    reads = []
    import workbench.runs

    original = workbench.runs.read_run
    monkeypatch.setattr(workbench.runs, "read_run", lambda path: reads.append(path.name) or original(path))
    index.rows()
    index.rows()  # the listing keeps every run's headline, not the whole runs
    assert sorted(reads) == ["a", "b"]
    index.complete_run("b")
    index.complete_run("a")
    index.complete_run("a")
    assert sorted(reads) == ["a", "a", "b"]  # b was kept; a read again once, then kept


def test_detail_and_complete_run_and_their_refusals(tmp_path):
    complete(tmp_path / "a", score=1)
    running = RunFolder.create(tmp_path / "b", "t", "workbench lab_a")
    (tmp_path / "plain").mkdir()
    index = RunsIndex(tmp_path)
    detail = index.detail("a")
    assert detail["row"]["status"] == "complete" and detail["manifest"]["status"] == "complete"
    assert detail["results"][0]["kind"] == "lab_a" and detail["results"][0]["score"] == 1
    assert index.detail("b")["results"] == []
    run, row = index.complete_run("a")
    assert row["id"] == "a" and run.results[0].kind == "lab_a"
    with pytest.raises(NotReady, match="running"):
        index.complete_run("b")
    with pytest.raises(NotFound, match="not a run folder"):
        index.detail("plain")
    with pytest.raises(NotFound):
        index.detail("../a")
    assert index.status("b") == ("running", None)
    running.save([generic("lab_a")])


def test_a_run_file_linked_from_outside_is_forbidden(tmp_path):
    outside = complete(tmp_path / "outside")
    root = tmp_path / "runs"
    (root / "peek").mkdir(parents=True)
    (root / "peek" / "manifest.json").symlink_to(outside / "manifest.json")
    index = RunsIndex(root)
    (row,) = index.rows()
    assert row["status"] == "unreadable" and "outside the runs root" in row["error"]
    for read in (index.detail, index.complete_run, index.status):
        with pytest.raises(Forbidden):
            read("peek")


ROWS = [
    {"id": "a", "kinds": ["sparsity"], "model": "tiny-relu", "command": "workbench sparsity --seed 1",
     "status": "complete", "created": "2026-01-02"},
    {"id": "b", "kinds": ["model_facts", "evaluation"], "model": "smollm2-135m",
     "command": "workbench evaluate", "status": "running", "created": "2026-01-03"},
    {"id": "c", "kinds": [], "model": None, "command": None, "status": "unreadable", "created": None},
    {"id": "d", "kinds": ["sparsity"], "model": "tiny-moe", "command": "workbench sparsity",
     "status": "failed", "created": "2026-01-01"},
]  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "status", "q", "ids"),
    [
        (None, None, None, ["a", "b", "c", "d"]),
        ("sparsity", None, "", ["a", "d"]),
        ("evaluation", None, None, ["b"]),
        (None, "failed", None, ["d"]),
        ("sparsity", "complete", None, ["a"]),
        (None, None, "SEED 1", ["a"]),
        (None, None, "smollm2", ["b"]),
        (None, None, "model_facts", ["b"]),
        (None, None, "nothing like it", []),
    ],
)
def test_filters(kind, status, q, ids):
    assert [row["id"] for row in filter_rows(ROWS, kind, status, q)] == ids


@pytest.mark.parametrize(
    ("sort", "ids"),
    [
        (None, ["b", "a", "d", "c"]),
        ("-created", ["b", "a", "d", "c"]),
        ("created", ["d", "a", "b", "c"]),
        ("model", ["b", "d", "a", "c"]),
        ("status", ["a", "d", "b", "c"]),
        ("-status", ["c", "b", "d", "a"]),
        ("kind", ["b", "a", "d", "c"]),  # by the main (last) kind: evaluation < sparsity; ties by id
    ],
)
def test_orders(sort, ids):
    assert [row["id"] for row in sort_rows(ROWS, sort)] == ids


def test_an_unknown_order_is_refused():
    with pytest.raises(ValueError, match="unknown sort"):
        sort_rows(ROWS, "size")


def test_a_result_kind_that_breaks_makes_one_unreadable_row_not_a_broken_listing(tmp_path, monkeypatch):
    complete(tmp_path / "a", kind="lab_broken")
    complete(tmp_path / "b", kind="lab_fine", score=1)
    import workbench.lab.index as index_module

    original = index_module.merged_headline

    def headline(results):
        if results[0].kind == "lab_broken":
            raise AttributeError("'NoneType' object has no attribute 'loss'")
        return original(results)

    monkeypatch.setattr(index_module, "merged_headline", headline)
    rows = {row["id"]: row for row in RunsIndex(tmp_path).rows()}
    assert rows["a"]["status"] == "unreadable" and "no attribute 'loss'" in rows["a"]["error"]
    assert rows["b"]["status"] == "complete" and rows["b"]["headline"] == {"score": 1}
