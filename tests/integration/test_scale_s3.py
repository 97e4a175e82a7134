"""Captures into object storage: a local Ray cluster writing to a local S3 server (moto's, through s3fs,
as a real bucket would be written), with the demo models.

- `capture --store s3://… --workers 2` makes a store that reads (through the URL) as the one-process
  capture does, shard by shard, and `inspect s3://… --verify` checks every shard;
- a worker killed mid-range leaves its staged shards, and `--resume` goes on from them, uploads the rest,
  and the store read from the bucket equals the one-process capture.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid

import pytest
import ray
import s3fs
import torch
from gated_probe import capture_killed_at_gate
from moto.server import ThreadedMotoServer
from safetensors.torch import load_file

from workbench.cli import main
from workbench.corpus import windows_for
from workbench.errors import WorkbenchError
from workbench.models import load_model
from workbench.probes.capture import ActivationProbe, StoreSink, capture
from workbench.scale.capture import sharded_capture
from workbench.scale.cluster import Workers
from workbench.store import StoreReader
from workbench.store.remote import Remote, read_cache, staging_folder

BUCKET = "workbench-test"


@pytest.fixture(scope="module")
def bucket():
    """A local S3 server and a bucket on it; Ray starts after the endpoint is set, so workers see it."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the server's line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir(BUCKET)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}"
    finally:
        ray.shutdown()
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        s3fs.S3FileSystem.clear_instance_cache()


def _same_store(local, url, cache) -> None:
    """The same shards (bytes, checksums), tokens, values and metadata, every shard verified."""
    a, b = StoreReader(local), StoreReader(url, cache=cache)
    assert a.complete and b.complete and len(a) == len(b) > 0
    key = lambda s: (s["start"], s["stop"], s["bytes"], s["xxh3_128"])  # noqa: E731
    assert [key(s) for s in a.shards] == [key(s) for s in b.shards]
    va, vb = a.read(slice(None)), b.read(slice(None))
    assert va.keys() == vb.keys()
    for k in va:
        assert torch.equal(va[k], vb[k]), k
    assert b.verify() == []


def test_a_capture_into_s3_reads_as_the_one_process_capture(bucket, tmp_path, capsys):
    url = f"{bucket}/cli"
    common = ["capture", "--hooks", "blocks.*.hook_resid_post", "--routing", "--shard-tokens", "128"]
    common += ["--model", "tiny-moe", "--tokens", "1024", "--context", "32", "--batch-size", "4", "--json"]
    assert main(common + ["--out", str(tmp_path / "one")]) == 0
    one = json.loads(capsys.readouterr().out)
    assert main(common + ["--out", str(tmp_path / "two"), "--store", url, "--workers", "2"]) == 0
    two = json.loads(capsys.readouterr().out)
    assert two["store"] == url and one["store"] == "store"
    assert (one["tokens"], one["shards"]) == (two["tokens"], two["shards"])
    for layer, load in one["expert_load"].items():  # folded on the workers, merged
        assert two["expert_load"][layer] == pytest.approx(load, rel=1e-9)
    _same_store(tmp_path / "one" / "store", url, tmp_path / "cache")
    manifest = Remote(url).read_json("store.json")
    assert [r["status"] for r in manifest["ranges"]] == ["complete", "complete"]
    for i in range(2):  # each worker dropped its staged copy once the bucket held it
        key = f"{url}/ranges/{i:05d}#{manifest['created']}"
        assert not staging_folder(key).exists()

    assert main(["inspect", url, "--verify", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["verified"] is True and summary["tokens"] == 1024
    assert main(common + ["--out", str(tmp_path / "three"), "--store", url, "--workers", "2"]) == 2
    assert "not empty" in capsys.readouterr().err  # a fresh capture never overwrites a bucket's store
    assert main(common + ["--out", str(tmp_path / "four"), "--store", url]) == 2
    assert "--workers" in capsys.readouterr().err


def test_a_killed_worker_resumes_from_its_staged_shards(bucket, tmp_path):
    handle = load_model("tiny-relu", device="cpu", progress=False)
    windows = windows_for(handle, context=32, n_tokens=1024, seed=5)
    hooks = ["blocks.1.mlp.hook_post"]
    per_shard = 2 * 32  # a shard is one batch of 2 windows: 8 shards a range
    info = {"test": "kill-s3"}
    one = tmp_path / "one"
    capture(
        handle, windows, [ActivationProbe(hooks)], StoreSink(one, info, tokens_per_shard=per_shard), 2, False
    )
    url, gate = f"{bucket}/kill", tmp_path / "gate"
    workers = Workers(2, max_retries=0)
    error = capture_killed_at_gate(
        lambda probe: sharded_capture(
            handle,
            windows,
            [probe],
            url,
            info,
            workers=workers,
            batch_size=2,
            tokens_per_shard=per_shard,
            progress=False,
        ),
        hooks,
        gate,
    )
    assert isinstance(error, WorkbenchError) and "--resume" in str(error), error

    manifest = Remote(url).read_json("store.json")
    status = [r["status"] for r in manifest["ranges"]]
    assert sorted(status) == ["complete", "pending"] and manifest["status"] == "writing"
    killed = status.index("pending")
    assert Remote(url).read_json(f"ranges/{killed:05d}/store.json") is None  # nothing of it uploaded
    staged = staging_folder(f"{url}/ranges/{killed:05d}#{manifest['created']}")
    partial = json.loads((staged / "store.json").read_text())
    assert 0 < partial["tokens_written"] < partial["n_tokens"]  # durable staged shards before the kill

    outcome = sharded_capture(
        handle,
        windows,
        [ActivationProbe(hooks)],
        url,
        info,
        workers=workers,
        batch_size=2,
        tokens_per_shard=per_shard,
        resume=True,
        progress=False,
    )
    assert outcome.ran == [killed]
    resumed = Remote(url).read_json(f"ranges/{killed:05d}/store.json")
    assert resumed["resumes"][0]["tokens_done"] == partial["tokens_written"]  # went on from its shards
    _same_store(one, url, tmp_path / "cache")


def test_a_transcoder_trains_from_the_bucket_as_from_the_local_store(bucket, tmp_path, capsys):
    url = f"{bucket}/pairs"
    cap = ["capture", "--model", "tiny-relu", "--context", "32", "--tokens", "2048", "--batch-size", "4"]
    cap += ["--hooks", "blocks.1.mlp.hook_in", "--hooks", "blocks.1.mlp.hook_out", "--shard-tokens", "256"]
    assert main([*cap, "--out", str(tmp_path / "local")]) == 0
    assert main([*cap, "--out", str(tmp_path / "remote"), "--store", url, "--workers", "2"]) == 0
    train = ["transcoder", "train", "--model", "tiny-relu", "--layer", "1", "--width", "64", "--k", "4"]
    train += ["--batch-tokens", "256", "--tokens", "4096", "--json"]
    assert main([*train, "--store", str(tmp_path / "local" / "store"), "--out", str(tmp_path / "a")]) == 0
    assert main([*train, "--store", url, "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    a, b = (json.loads((tmp_path / d / "results.json").read_text())["results"][0] for d in "ab")
    assert a["source"] != b["source"] and url in b["source"]
    assert a["curve"] == b["curve"] and a["curve"][-1]["tokens"] == 4096
    wa, wb = (load_file(tmp_path / d / "checkpoint" / "weights.safetensors") for d in "ab")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)  # the same batches
    # two DDP processes downloading into one shared, emptied cache: the same global batches
    cache = read_cache(f"{url}#{Remote(url).read_json('store.json')['created']}")
    assert cache.is_dir()
    shutil.rmtree(cache)
    assert main([*train, "--store", url, "--nproc", "2", "--out", str(tmp_path / "c")]) == 0
    wc = load_file(tmp_path / "c" / "checkpoint" / "weights.safetensors")
    assert all(torch.allclose(wa[k], wc[k], atol=1e-5) for k in wa)
    assert not list(cache.rglob("*.part"))  # each process's temp files were renamed or removed
