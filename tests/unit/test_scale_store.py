"""The coordinated store without Ray: ranges written by hand, as workers would, read as one store; one
coordinator at a time; no single writer on it; fsspec locations, object storage (fsspec's in-memory
filesystem here; tests/integration/test_scale_s3.py runs Ray against a local S3 server); and Ray stays
optional."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from workbench.errors import WorkbenchError
from workbench.store import FieldSpec, StoreReader, StoreWriter
from workbench.store.format import MANIFEST
from workbench.store.ranges import Coordinator, store_location
from workbench.store.remote import Remote, staging_folder

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
    assert len(StoreReader(f"file://{tmp_path / 'many'}")) == 100  # read through a file:// URL too
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
    with pytest.raises(WorkbenchError, match="--workers"):
        store_location("memory://bucket/store")


def _upload_range(coord: Coordinator, i: int, per_shard: int) -> None:
    """What a worker does for a remote range: write it in its staging folder, upload it, drop the copy."""
    r, url, staged = coord.ranges[i], coord.range_location(i), staging_folder(coord.range_staging_key(i))
    writer = StoreWriter.open(
        staged,
        FIELDS,
        r["stop"] - r["start"],
        {},
        resume=True,
        tokens_per_shard=per_shard,
        base_token=r["start"],
    )
    writer.append(*_tokens(r["start"], r["stop"]))
    writer.close()
    Remote(url).upload_store(staged)


def test_a_store_on_object_storage_is_staged_uploaded_and_read_through_a_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    url = f"memory://bucket/{tmp_path.name}/store"
    single = StoreWriter.open(tmp_path / "single", FIELDS, 100, {}, tokens_per_shard=16)
    single.append(*_tokens(0, 100))
    single.close()

    coord = Coordinator.open(url, FIELDS, 100, {}, tokens_per_shard=16, parts=3)
    assert coord.range_location(1) == f"{url}/ranges/00001" and coord.location == url
    _upload_range(coord, 2, 16)
    coord.complete(2)
    assert len(StoreReader(url)) == 0  # the remote manifest is uploaded at each change
    _upload_range(coord, 0, 16)
    coord.complete(0)
    assert len(StoreReader(url)) == 32
    coord.release()

    # the driver resumes on another machine: its staging folder is gone, the remote manifest rules
    staged = staging_folder(url)
    for item in staged.iterdir():
        item.unlink()
    coord = Coordinator.open(url, FIELDS, 100, {}, tokens_per_shard=16, parts=3, resume=True)
    assert coord.pending() == [1]
    with pytest.raises(WorkbenchError, match="not a complete store"):
        coord.complete(1)
    _upload_range(coord, 1, 16)
    assert coord.range_done(1)
    coord.complete(1)
    coord.close()

    remote = StoreReader(url, cache=tmp_path / "read")
    a = StoreReader(tmp_path / "single")
    assert remote.complete and remote.verify() == []
    key = lambda s: (s["start"], s["stop"], s["bytes"], s["xxh3_128"])  # noqa: E731
    assert [key(s) for s in a.shards] == [key(s) for s in remote.shards]
    assert all(torch.equal(a.read(slice(None))[k], remote.read(slice(None))[k]) for k in ("act", *META))
    assert (tmp_path / "read" / "ranges" / "00002" / "shard-00001.safetensors").is_file()

    with pytest.raises(WorkbenchError, match="not empty"):
        Coordinator.open(url, FIELDS, 100, {}, tokens_per_shard=16, parts=3)
    fs = Remote(url).fs
    victim = f"bucket/{tmp_path.name}/store/ranges/00001/shard-00000.safetensors"
    data = bytearray(fs.cat_file(victim))
    data[-1] ^= 0xFF
    fs.pipe_file(victim, bytes(data))
    damaged = StoreReader(url, cache=tmp_path / "fresh")
    assert damaged.damage() == {
        "ranges/00001/shard-00000.safetensors": "changed since it was written (checksum mismatch)"
    }
    fs.rm_file(victim)
    with pytest.raises(WorkbenchError, match="missing from"):
        StoreReader(url, cache=tmp_path / "again").read(slice(32, 40))
    with pytest.raises(WorkbenchError, match=f"no {MANIFEST}"):
        StoreReader(f"memory://bucket/{tmp_path.name}/nothing")


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
