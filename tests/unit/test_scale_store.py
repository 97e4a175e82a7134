"""The coordinated store without Ray: ranges written by hand, as workers would, read as one store; one
coordinator at a time; no single writer on it; fsspec locations; and Ray stays optional."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from workbench.errors import WorkbenchError
from workbench.store import FieldSpec, StoreReader, StoreWriter
from workbench.store.ranges import Coordinator, store_location

FIELDS = [FieldSpec("act", (3,), "float32")]
META = ("token", "doc", "domain", "position", "window")


def _tokens(start: int, stop: int) -> tuple[dict, dict]:
    values = torch.arange(start, stop, dtype=torch.float32)[:, None].expand(-1, 3).contiguous()
    meta = {k: torch.arange(start, stop) for k in META}
    return {"act": values}, meta


def _write_range(coord: Coordinator, i: int, per_shard: int) -> None:
    r = coord.ranges[i]
    writer = StoreWriter.open(
        coord.range_path(i),
        FIELDS,
        r["stop"] - r["start"],
        {},
        resume=True,
        tokens_per_shard=per_shard,
        base_token=r["start"],
    )
    writer.append(*_tokens(r["start"], r["stop"]))
    writer.close()


def test_ranges_written_apart_read_as_one_store_equal_to_a_single_writer(tmp_path):
    single = StoreWriter.open(tmp_path / "single", FIELDS, 100, {}, tokens_per_shard=16)
    single.append(*_tokens(0, 100))
    single.close()

    coord = Coordinator.open(f"file://{tmp_path / 'many'}", FIELDS, 100, {}, tokens_per_shard=16, parts=3)
    assert [(r["start"], r["stop"]) for r in coord.ranges] == [(0, 32), (32, 64), (64, 100)]
    _write_range(coord, 2, 16)  # the last range finishes first: not yet readable (not a prefix)
    coord.complete(2)
    assert len(StoreReader(tmp_path / "many")) == 0 and coord.pending() == [0, 1]
    _write_range(coord, 0, 16)
    coord.complete(0)
    assert len(StoreReader(tmp_path / "many")) == 32  # the complete prefix
    with pytest.raises(WorkbenchError, match="open in another writer"):  # one coordinator at a time
        Coordinator.open(tmp_path / "many", FIELDS, 100, {}, tokens_per_shard=16, parts=3, resume=True)
    coord.release()

    coord = Coordinator.open(tmp_path / "many", FIELDS, 100, {}, tokens_per_shard=16, parts=5, resume=True)
    assert coord.pending() == [1] and len(coord.ranges) == 3  # the plan is the stored one
    with pytest.raises(WorkbenchError, match="not a complete store"):
        coord.complete(1)
    _write_range(coord, 1, 16)
    coord.complete(1)
    coord.close()

    a, b = StoreReader(tmp_path / "single"), StoreReader(tmp_path / "many")
    assert b.complete and b.verify() == []
    key = lambda s: (s["start"], s["stop"], s["bytes"], s["xxh3_128"])  # noqa: E731
    assert [key(s) for s in a.shards] == [key(s) for s in b.shards]  # byte for byte, shard by shard
    assert all(torch.equal(a.read(slice(None))[k], b.read(slice(None))[k]) for k in ("act", *META))
    sub = StoreReader(tmp_path / "many" / "ranges" / "00001")  # a range reads alone too
    assert torch.equal(sub.read(slice(None))["act"], a.read(slice(32, 64))["act"])

    with pytest.raises(WorkbenchError, match="coordinated store"):  # no single writer appends to it
        StoreWriter.open(tmp_path / "many", FIELDS, 100, {}, resume=True, tokens_per_shard=16)
    with pytest.raises(WorkbenchError, match="same settings"):
        Coordinator.open(tmp_path / "many", FIELDS, 100, {}, tokens_per_shard=32, parts=3, resume=True)
    with pytest.raises(WorkbenchError, match="single writer"):
        Coordinator.open(tmp_path / "single", FIELDS, 100, {}, tokens_per_shard=16, parts=3, resume=True)


def test_store_locations_are_local_paths_or_file_urls(tmp_path):
    assert store_location(f"file://{tmp_path}/x") == tmp_path / "x"
    assert store_location(tmp_path / "y") == tmp_path / "y"
    with pytest.raises(WorkbenchError, match="shared filesystem"):
        store_location("memory://bucket/store")


def test_ray_is_imported_only_when_workers_are_asked_for():
    code = (
        "import sys, workbench, workbench.cli, workbench.scale.fold, workbench.scale.capture\n"
        "import workbench.commands.capture, workbench.commands.sparsity, workbench.commands.transcoder\n"
        "workbench.cli.build_parser().format_help()\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_workers_without_ray_say_how_to_install_it():
    code = (
        "import sys\n"
        "sys.modules['ray'] = None  # as if the scale extra were not installed\n"
        "from workbench.cli import main\n"
        "sys.exit(main(['sparsity', '--model', 'tiny-relu', '--workers', '2']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "pip install 'interp-workbench[scale]'" in done.stderr
