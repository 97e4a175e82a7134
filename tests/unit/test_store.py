"""The activation store: exact round trips, paired shuffles, damage detection, resume, preflight, lock."""

from __future__ import annotations

import gc
import json
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from workbench.errors import WorkbenchError
from workbench.store import (
    META_FIELDS,
    FieldSpec,
    StoreReader,
    StoreWriter,
    estimate_bytes,
    inspect_store,
)

INFO = {"model": {"name": "test"}, "data": {"slice": "0:100"}, "hooks": ["x"], "settings": {}}
ALL_DTYPES = [
    FieldSpec("f32", (3,), "float32"),
    FieldSpec("f16", (2, 2), "float16"),
    FieldSpec("bf16", (5,), "bfloat16"),
    FieldSpec("i64", (2,), "int64"),
    FieldSpec("i32", (), "int32"),
    FieldSpec("i16", (4,), "int16"),
]
ODD_BATCHES = [3, 5, 11, 1, 7, 13]


def make_data(fields: list[FieldSpec], n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values in each field's own dtype (so round trips compare exactly), plus metadata."""
    g = torch.Generator().manual_seed(seed)
    data = {}
    for f in fields:
        if f.torch_dtype.is_floating_point:
            data[f.name] = torch.randn((n, *f.shape), generator=g).to(f.torch_dtype)
        else:
            info = torch.iinfo(f.torch_dtype)
            low, high = max(info.min, -(2**40)), min(info.max, 2**40)
            data[f.name] = torch.randint(low, high, (n, *f.shape), generator=g, dtype=f.torch_dtype)
    idx = torch.arange(n)
    meta = {
        "token": idx * 7 % 4096,
        "doc": idx // 10,
        "domain": idx % 3,
        "position": idx % 10,
        "window": idx // 10,
    }
    return data | meta


def feed(
    writer: StoreWriter, data: dict[str, torch.Tensor], start: int, stop: int, batches=ODD_BATCHES
) -> None:
    """Append data[start:stop] in batches of sizes cycling through `batches`."""
    i, k = start, 0
    while i < stop:
        j = min(stop, i + batches[k % len(batches)])
        tensors = {f.name: data[f.name][i:j] for f in writer.fields}
        writer.append(tensors, {m: data[m][i:j] for m in META_FIELDS})
        i, k = j, k + 1


def write_store(path, fields, data, n, batches=ODD_BATCHES, tokens_per_shard=7, start=0, close=True):
    """Open (resuming when start > 0), append data[start:n], close unless told not to; return the writer."""
    writer = StoreWriter.open(path, fields, n, INFO, resume=start > 0, tokens_per_shard=tokens_per_shard)
    feed(writer, data, start, n, batches)
    if close:
        writer.close()
    return writer


def read_all(reader: StoreReader, batch_size: int = 9) -> dict[str, torch.Tensor]:
    batches = list(reader.iter_batches(list(reader.fields), batch_size))
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


@pytest.fixture
def store(tmp_path) -> tuple[Path, dict[str, torch.Tensor]]:
    data = make_data(ALL_DTYPES, 50)
    write_store(tmp_path / "s", ALL_DTYPES, data, 50)
    return tmp_path / "s", data


def test_round_trip_every_dtype_across_shards(store):
    path, data = store
    reader = StoreReader(path, verify=True)
    assert reader.complete and reader.n_tokens == len(reader) == 50
    assert [s["stop"] - s["start"] for s in reader.shards] == [7] * 7 + [1]
    for batch_size in (1, 4, 9, 50, 64):
        got = read_all(reader, batch_size)
        assert_same(got, {k: data[k] for k in got})
    assert list(got) == [f.name for f in ALL_DTYPES] + list(META_FIELDS)
    assert [len(b["token"]) for b in reader.iter_batches(["f32"], 16)] == [16, 16, 16, 2]


def test_writer_casts_within_kind(tmp_path):
    fields = [FieldSpec("h", (4,), "bfloat16"), FieldSpec("k", (2,), "int16")]
    h, k = torch.randn(10, 4), torch.randint(-100, 100, (10, 2))  # float32 and int64 in
    meta = {m: torch.arange(10, dtype=torch.int32) for m in META_FIELDS}
    with torch.inference_mode():  # the capture loop appends inference tensors
        writer = StoreWriter.open(tmp_path / "s", fields, 10, INFO, tokens_per_shard=5)
        writer.append({"h": h[:5], "k": k[:5]}, {m: v[:5] for m, v in meta.items()})
        writer.abort()
    with StoreWriter.open(tmp_path / "s", fields, 10, INFO, resume=True) as writer:  # outside inference mode
        writer.append({"h": h[5:], "k": k[5:]}, {m: v[5:] for m, v in meta.items()})
    got = StoreReader(tmp_path / "s")[:]
    assert torch.equal(got["h"], h.to(torch.bfloat16)) and torch.equal(got["k"], k.to(torch.int16))
    assert got["doc"].dtype == torch.int64


def test_bad_batches_are_refused_before_buffering(tmp_path):
    fields = [FieldSpec("h", (4,), "float32"), FieldSpec("k", (2,), "int16")]
    meta = {m: torch.zeros(3, dtype=torch.int64) for m in META_FIELDS}
    good = {"h": torch.zeros(3, 4), "k": torch.zeros(3, 2, dtype=torch.int16)}
    with StoreWriter.open(tmp_path / "s", fields, 10, INFO) as writer:
        cases = [
            ({"h": good["h"]}, meta, r"missing \['k'\]"),
            (good | {"h": torch.zeros(3, 5)}, meta, r"Field h must be \[n, 4\]; got \(3, 5\)"),
            (good | {"h": torch.zeros(3, 4, dtype=torch.int64)}, meta, "cannot be stored as torch.float32"),
            (good | {"k": torch.full((3, 2), 40000)}, meta, "do not fit the stored torch.int16"),
            (good, meta | {"doc": torch.zeros(3)}, "cannot be stored as torch.int64"),
            (good, meta | {"doc": torch.zeros(4, dtype=torch.int64)}, "same number of tokens"),
            (good, {k: v for k, v in meta.items() if k != "window"}, r"missing \['window'\]"),
        ]
        for tensors, m, message in cases:
            with pytest.raises(WorkbenchError, match=message):
                writer.append(tensors, m)
        assert writer.tokens_appended == 0
        writer.append(good, meta)
        writer.append(good, meta)
        writer.append(good, meta)
        with pytest.raises(WorkbenchError, match="more than the 10 planned"):
            writer.append(good, meta)  # 12 > 10: refused whole
        assert writer.tokens_appended == 9
        writer.append({k: v[:1] for k, v in good.items()}, {k: v[:1] for k, v in meta.items()})
    assert StoreReader(tmp_path / "s").n_tokens == 10


def test_paired_shuffle_covers_every_token_once(tmp_path):
    fields = [
        FieldSpec("idx", (1,), "int64"),
        FieldSpec("vec", (3,), "float32"),
        FieldSpec("half", (2,), "bfloat16"),
    ]
    n = 1000
    idx = torch.arange(n)
    data = {
        "idx": idx[:, None],
        "vec": idx[:, None] * torch.tensor([1.0, 2.0, 3.0]),
        "half": idx[:, None].repeat(1, 2),
    }
    data["half"] = (data["half"] % 256).to(torch.bfloat16)  # exact in bfloat16
    data |= {m: idx * (i + 1) for i, m in enumerate(META_FIELDS)}
    write_store(tmp_path / "s", fields, data, n, batches=[37, 91], tokens_per_shard=64)
    reader = StoreReader(tmp_path / "s")

    def order(seed: int, fields=("idx", "vec", "half")) -> torch.Tensor:
        seen = []
        for batch in reader.iter_batches(list(fields), 32, shuffle=True, seed=seed):
            i = batch["token"]  # metadata is paired too
            assert set(batch) == set(fields) | set(META_FIELDS)
            for k, m in enumerate(META_FIELDS):
                assert torch.equal(batch[m], i * (k + 1))
            if "idx" in batch:
                assert torch.equal(batch["idx"][:, 0], i)
            if "vec" in batch:
                assert torch.equal(batch["vec"], i[:, None] * torch.tensor([1.0, 2.0, 3.0]))
            if "half" in batch:
                assert torch.equal(batch["half"], (i[:, None].repeat(1, 2) % 256).to(torch.bfloat16))
            seen.append(i)
        return torch.cat(seen)

    first = order(0)
    assert torch.equal(first.sort().values, torch.arange(n))  # every token exactly once
    assert not torch.equal(first, torch.arange(n))
    assert torch.equal(first, order(0)) and not torch.equal(first, order(1))
    assert torch.equal(order(3, ("vec",)).sort().values, torch.arange(n))
    shards_in_first_batch = (first[:32] // 64).unique()
    assert len(shards_in_first_batch) >= 4  # a batch mixes distant parts of the store, not one shard
    sizes = [len(b["token"]) for b in reader.iter_batches(["idx"], 32, shuffle=True)]
    assert sizes == [32] * (n // 32) + [n % 32]


def test_random_access_equals_in_order_data(store):
    path, data = store
    reader = StoreReader(path)
    everything = read_all(reader)
    one = reader[13]
    assert set(one) == set(everything)
    assert all(torch.equal(one[k], everything[k][13]) for k in one)
    assert all(torch.equal(reader[-1][k], everything[k][-1]) for k in one)
    for index in [slice(None), slice(3, 40, 4), slice(48, 2, -5), slice(10, 10)]:
        got, rows = reader[index], torch.tensor(list(range(50))[index], dtype=torch.int64)
        assert all(torch.equal(got[k], everything[k][rows]) for k in got)
    picks = torch.tensor([49, 0, 7, 7, 6, 23, -2])
    assert_same(reader[picks], {k: v[picks] for k, v in everything.items()})
    mask = torch.arange(50) % 3 == 0
    assert_same(reader[mask], {k: v[mask] for k, v in everything.items()})
    assert set(reader.read([1, 2], fields=["bf16"])) == {"bf16", *META_FIELDS}
    with pytest.raises(IndexError):
        reader[50]
    with pytest.raises(WorkbenchError, match="no field 'bf61'; did you mean bf16"):
        reader.read(0, fields=["bf61"])


def _corrupt(path: Path, offset_from_end: int = 3) -> None:
    raw = bytearray(path.read_bytes())
    raw[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_damaged_and_truncated_shards_are_named(store):
    path, _ = store
    _corrupt(path / "shard-00001.safetensors")  # same size, one data byte changed
    truncated = path / "shard-00003.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:-10])
    reader = StoreReader(path, verify=False)
    assert reader.verify() == ["shard-00001.safetensors", "shard-00003.safetensors"]
    damage = reader.damage()
    assert damage["shard-00001.safetensors"] == "changed since it was written (checksum mismatch)"
    assert damage["shard-00003.safetensors"].startswith("truncated")
    with pytest.raises(
        WorkbenchError, match=r"shard shard-00003\.safetensors is truncated \([\d,]+ of [\d,]+ bytes\)"
    ):
        list(reader.iter_batches(["f32"], 5, shuffle=True))  # size is checked on every read, even unverified
    with pytest.raises(WorkbenchError, match=r"shard-00003\.safetensors is truncated"):
        reader[3 * 7 + 1]
    assert reader[0]["f32"].shape == (3,)  # good shards stay readable
    (path / "shard-00005.safetensors").unlink()
    assert inspect_store(path, verify=True)["bad_shards"] == [
        "shard-00001.safetensors",
        "shard-00003.safetensors",
        "shard-00005.safetensors",
    ]


def test_a_flipped_byte_is_refused_on_first_read(store, monkeypatch):
    """One byte changed inside a shard (same size): readers refuse it unless told verify=False."""
    import workbench.store.reader as reader_module

    path, data = store
    shard = path / "shard-00002.safetensors"  # tokens 14..20
    good = shard.read_bytes()
    raw = bytearray(good)
    raw[-9] ^= 0x01  # a data byte (the last tensor), same size
    shard.write_bytes(bytes(raw))
    reader = StoreReader(path)
    assert_same(reader[0:14], {k: v[0:14] for k, v in data.items()})  # the good shards read as written
    refused = r"Damaged store .*: shard shard-00002\.safetensors is changed since it was written \(checksum"
    with pytest.raises(WorkbenchError, match=refused + r".*new folder.*workbench inspect DIR --verify"):
        reader[15]
    with pytest.raises(WorkbenchError, match=refused):
        read_all(StoreReader(path))
    with pytest.raises(WorkbenchError, match=refused):
        list(StoreReader(path).iter_batches(["i16"], 4, shuffle=True))
    unchecked = read_all(StoreReader(path, verify=False))  # the explicit opt-out reads the changed bytes
    assert any(not torch.equal(unchecked[k][14:21], data[k][14:21]) for k in unchecked)
    summary = inspect_store(path, verify=True)
    assert summary["verified"] is False and summary["complete"] is True
    assert summary["bad_shards"] == ["shard-00002.safetensors"]
    assert summary["damage"] == {
        "shard-00002.safetensors": "changed since it was written (checksum mismatch)"
    }

    hashed = []  # each reader hashes each shard once, however often it reads it

    def counting(file, fsync=False):
        hashed.append(Path(file).name)
        return real(file, fsync)

    real = reader_module.checksum_file
    monkeypatch.setattr(reader_module, "checksum_file", counting)
    shard.write_bytes(good)
    reader = StoreReader(path)
    for seed in range(3):
        list(reader.iter_batches(["f32"], 4, shuffle=True, seed=seed))
    reader[0:50]
    assert sorted(hashed) == sorted(p.name for p in path.glob("shard-*.safetensors"))
    hashed.clear()
    read_all(StoreReader(path, verify=False))
    assert hashed == []


def test_inspect_verify_fails_on_a_flipped_byte(store, capsys):
    """`workbench inspect --verify` exits non-zero naming each bad shard; its JSON says verified: false."""
    from workbench.cli import main

    path, _ = store
    assert main(["inspect", str(path), "--verify", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["verified"] is True
    assert main(["inspect", str(path), "--verify"]) == 0
    assert "every shard verified" in capsys.readouterr().out
    _corrupt(path / "shard-00001.safetensors")
    _corrupt(path / "shard-00004.safetensors", offset_from_end=20)
    assert main(["inspect", str(path), "--verify", "--json"]) == 2
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["verified"] is False and summary["complete"] is True
    assert summary["bad_shards"] == ["shard-00001.safetensors", "shard-00004.safetensors"]
    assert "2 of 8 shards are bad: shard-00001.safetensors is changed" in captured.err
    assert "shard-00004.safetensors is changed since it was written" in captured.err
    assert main(["inspect", str(path), "--verify"]) == 2
    captured = capsys.readouterr()
    assert "verified" not in captured.out and "DAMAGED" in captured.out
    assert "shard-00001.safetensors" in captured.err and "shard-00004.safetensors" in captured.err
    assert main(["inspect", str(path), "--json"]) == 0  # not asked to verify: unchecked, not "good"
    assert json.loads(capsys.readouterr().out)["verified"] is None


def test_garbage_header_and_swapped_shards_are_named(store):
    """The header checks run on every read, also with verify=False (the checksum catches both first)."""
    path, _ = store
    first, second = path / "shard-00000.safetensors", path / "shard-00001.safetensors"
    first.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!".ljust(first.stat().st_size, b" "))
    with pytest.raises(WorkbenchError, match=r"shard shard-00000\.safetensors is unreadable"):
        StoreReader(path, verify=False)[0]
    with pytest.raises(WorkbenchError, match=r"shard shard-00000\.safetensors is changed"):
        StoreReader(path)[0]
    shutil.copy(second, path / "shard-00002.safetensors")  # same size, wrong token range
    with pytest.raises(
        WorkbenchError, match=r"shard-00002\.safetensors is unreadable \(it holds tokens 7\.\.14\)"
    ):
        StoreReader(path, verify=False)[15]
    with pytest.raises(WorkbenchError, match=r"shard shard-00002\.safetensors is changed"):
        StoreReader(path)[15]


def test_refuses_non_empty_folder_without_resume(store, tmp_path):
    path, _ = store
    with pytest.raises(
        WorkbenchError, match=r"holds a store with 50 of 50 tokens \(complete\).*--resume.*new folder"
    ):
        StoreWriter.open(path, ALL_DTYPES, 50, INFO)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(WorkbenchError, match=r"not empty: it holds 1 file\(s\), e.g. notes\.txt"):
        StoreWriter.open(other, ALL_DTYPES, 50, INFO)
    with pytest.raises(WorkbenchError, match=r"no store\.json but holds \['notes\.txt'\]"):
        StoreWriter.open(other, ALL_DTYPES, 50, INFO, resume=True)
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]  # refused before taking a lock there
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(path / "shard-00000.safetensors", loose)  # shards without a manifest are not ours to delete
    with pytest.raises(WorkbenchError, match=r"no store\.json but holds \['shard-00000\.safetensors'\]"):
        StoreWriter.open(loose, ALL_DTYPES, 50, INFO, resume=True)
    (loose / "shard-00000.safetensors").unlink()
    (loose / ".store.json.tmp").write_text("{")  # killed inside open, before its first manifest
    StoreWriter.open(loose, ALL_DTYPES, 50, INFO, resume=True).abort()
    assert sorted(p.name for p in loose.iterdir()) == ["store.json", "store.lock"]
    with pytest.raises(WorkbenchError, match="Cannot resume .* for 50 tokens .* asks for 60 tokens"):
        StoreWriter.open(path, ALL_DTYPES, 60, INFO, resume=True)
    with pytest.raises(WorkbenchError, match=r"Cannot resume .*f32 \[3\] float32.*f32 \[3\] float16"):
        StoreWriter.open(path, [FieldSpec("f32", (3,), "float16"), *ALL_DTYPES[1:]], 50, INFO, resume=True)
    with pytest.raises(WorkbenchError, match="not an activation store"):
        StoreReader(other)
    with pytest.raises(WorkbenchError, match=r"\['token'\] are reserved for per-token metadata"):
        StoreWriter.open(tmp_path / "meta", [FieldSpec("token", (1,), "int64")], 5, INFO)
    with pytest.raises(WorkbenchError, match="distinct names; repeated: f32"):
        StoreWriter.open(tmp_path / "dup", [ALL_DTYPES[0], ALL_DTYPES[0]], 5, INFO)


def test_resume_after_crash_matches_a_clean_run(tmp_path):
    n = 60
    data = make_data(ALL_DTYPES, n, seed=1)
    write_store(tmp_path / "clean", ALL_DTYPES, data, n)

    crashed = tmp_path / "crashed"
    writer = StoreWriter.open(crashed, ALL_DTYPES, n, INFO, tokens_per_shard=7)
    feed(writer, data, 0, 25)
    writer.wait_durable()  # full shards are written in a background thread
    assert writer.tokens_done == 21 and writer.tokens_appended == 25  # 3 durable shards + 4 buffered tokens
    manifest = json.loads((crashed / "store.json").read_text())
    assert manifest["status"] == "writing" and manifest["tokens_written"] == 21
    del writer  # abandoned without close, as if the process died (its lock goes with its file)
    gc.collect()
    # what a kill can leave: a half-written shard, a renamed but unlisted shard, a half-written manifest
    (crashed / ".shard-00003.safetensors.tmp").write_bytes(b"partial")
    shutil.copy(crashed / "shard-00002.safetensors", crashed / "shard-00003.safetensors")
    (crashed / ".store.json.tmp").write_text("{")

    writer = StoreWriter.open(crashed, ALL_DTYPES, n, INFO, resume=True, tokens_per_shard=7)
    assert writer.tokens_done == 21
    assert sorted(p.name for p in crashed.iterdir() if not p.name.startswith("shard-0000")) == [
        "store.json",
        "store.lock",
    ]
    assert not (crashed / "shard-00003.safetensors").exists()
    feed(writer, data, writer.tokens_done, n)
    writer.close()

    clean, resumed = StoreReader(tmp_path / "clean", verify=True), StoreReader(crashed, verify=True)
    assert resumed.complete and resumed.n_tokens == n
    assert_same(read_all(resumed), read_all(clean))
    strip = [{k: s[k] for k in ("file", "start", "stop", "bytes", "xxh3_128")} for s in clean.shards]
    assert resumed.shards == strip  # byte-identical shards
    assert resumed.manifest["resumes"][0]["removed"] == [
        ".shard-00003.safetensors.tmp",
        ".store.json.tmp",
        "shard-00003.safetensors",
    ]


def test_exception_inside_writer_keeps_store_resumable(tmp_path):
    data = make_data(ALL_DTYPES, 20)
    with (
        pytest.raises(RuntimeError),
        StoreWriter.open(tmp_path / "s", ALL_DTYPES, 20, INFO, tokens_per_shard=8) as w,
    ):
        w.append({f.name: data[f.name][:11] for f in ALL_DTYPES}, {m: data[m][:11] for m in META_FIELDS})
        raise RuntimeError("model blew up")
    reader = StoreReader(tmp_path / "s")
    assert not reader.complete and reader.n_tokens == 8  # the 3 buffered tokens were not written
    with pytest.raises(WorkbenchError, match="closed"):
        w.append({f.name: data[f.name][:1] for f in ALL_DTYPES}, {m: data[m][:1] for m in META_FIELDS})
    writer = write_store(tmp_path / "s", ALL_DTYPES, data, 20, start=8, tokens_per_shard=8)
    assert writer.tokens_done == 20
    assert_same(read_all(StoreReader(tmp_path / "s")), data)


def test_closing_early_leaves_store_resumable(tmp_path):
    data = make_data(ALL_DTYPES, 20)
    writer = write_store(tmp_path / "s", ALL_DTYPES, data, 12, close=False)
    writer._manifest["n_tokens"] = 20  # pretend 20 were planned
    with pytest.raises(WorkbenchError, match="closed after 12 of the 20 planned tokens.*--resume"):
        writer.close()
    manifest = json.loads((tmp_path / "s" / "store.json").read_text())
    assert manifest["status"] == "writing" and manifest["tokens_written"] == 12


def test_preflight_refuses_with_the_estimate(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**6, 10**6))
    fields = [FieldSpec("blocks.0.mlp.hook_post", (1024,), "float32")]
    data_bytes = estimate_bytes(fields, 100_000)
    assert data_bytes == 100_000 * (1024 * 4 + 5 * 8)
    with pytest.raises(WorkbenchError, match="Not enough disk") as caught:
        StoreWriter.open(tmp_path / "big", fields, 100_000, INFO)
    message = str(caught.value)
    need = int(message.split("(")[1].split(" bytes")[0].replace(",", ""))
    assert data_bytes <= need < data_bytes * 1.01
    assert "394.5 MiB" in message and "976.6 KiB" in message and "1,000,000 bytes" in message
    assert not (tmp_path / "big").exists()  # refused before anything was written
    StoreWriter.open(tmp_path / "small", fields, 100, INFO).abort()  # 410 KB fits in 1 MB


def test_second_writer_is_refused_in_process_and_across_processes(store, tmp_path):
    path, data = store
    writer = StoreWriter.open(path, ALL_DTYPES, 50, INFO, resume=True)
    with pytest.raises(WorkbenchError, match=r"open in another writer \(pid \d+ on .*\).*another folder"):
        StoreWriter.open(path, ALL_DTYPES, 50, INFO, resume=True)
    code = (
        "import sys; from workbench.store import StoreWriter, FieldSpec\n"
        "from workbench.errors import WorkbenchError\n"
        f"fields = [FieldSpec(**d) for d in {[f.__dict__ for f in ALL_DTYPES]!r}]\n"
        "try:\n"
        f"    StoreWriter.open({str(path)!r}, fields, 50, {{}}, resume=True)\n"
        "except WorkbenchError as e:\n"
        "    print(e); sys.exit(3)\n"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert other.returncode == 3, other.stderr
    assert "open in another writer" in other.stdout
    writer.close()
    StoreWriter.open(path, ALL_DTYPES, 50, INFO, resume=True).close()  # free again once closed
    assert StoreReader(path).complete


def test_inspect_store(store):
    path, _ = store
    summary = inspect_store(path)
    assert summary == {
        "tokens": 50,
        "planned_tokens": 50,
        "complete": True,
        "hooks": {f.name: {"shape": list(f.shape), "dtype": f.dtype} for f in ALL_DTYPES},
        "shards": 8,
        "bytes": sum(p.stat().st_size for p in path.glob("shard-*.safetensors")),
        "verified": None,  # not checked
    }
    checked = inspect_store(path, verify=True)
    assert checked["verified"] is True and checked["bad_shards"] == [] and checked["damage"] == {}
    json.dumps(summary)
    manifest = json.loads((path / "store.json").read_text())
    assert manifest["info"] == INFO and manifest["format"] == "workbench-store/1"
    assert {"created", "updated", "completed", "fields", "n_tokens", "tokens_written"} <= set(manifest)
    assert set(manifest["shards"][0]) == {"file", "start", "stop", "bytes", "xxh3_128"}


def test_failed_shard_write_is_explained_and_resumable(tmp_path, monkeypatch):
    import workbench.store.writer as writer_module

    data = make_data(ALL_DTYPES, 20)
    writer = StoreWriter.open(tmp_path / "s", ALL_DTYPES, 20, INFO, tokens_per_shard=8)
    feed(writer, data, 0, 8)
    real_write = writer_module.write_shard

    def disk_full(path, tensors, metadata):
        Path(path).write_bytes(b"half a shard")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer_module, "write_shard", disk_full)
    with pytest.raises(
        WorkbenchError, match=r"shard-00001\.safetensors .*No space left.*8 tokens .* --resume"
    ):
        feed(writer, data, 8, 16)
        writer.wait_durable()  # the shard is written in the background; its error surfaces here
    writer.abort()
    monkeypatch.setattr(writer_module, "write_shard", real_write)
    write_store(tmp_path / "s", ALL_DTYPES, data, 20, start=8, tokens_per_shard=8)
    assert_same(read_all(StoreReader(tmp_path / "s", verify=True)), data)


def test_shard_files_are_standard_safetensors(tmp_path):
    """Our single-pass writer produces files the safetensors library reads, with a matching checksum."""
    import xxhash
    from safetensors import safe_open

    from workbench.store.shardfile import write_shard

    tensors = {
        "a": torch.randn(5, 3),
        "b": torch.randn(5, 2).to(torch.bfloat16),
        "c": torch.arange(5),
        "d": torch.randn(5, 4).half(),
    }
    size, digest = write_shard(tmp_path / "x.safetensors", tensors, {"k": "v"})
    raw = (tmp_path / "x.safetensors").read_bytes()
    assert size == len(raw) and digest == xxhash.xxh3_128(raw).hexdigest()
    with safe_open(str(tmp_path / "x.safetensors"), framework="pt") as f:
        assert f.metadata() == {"k": "v"}
        for name, tensor in tensors.items():
            assert torch.equal(f.get_tensor(name), tensor)
