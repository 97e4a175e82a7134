"""Captures and reducer analyses on a local Ray cluster (`ray.init(num_cpus=2)`, the demo models).

- a sharded capture equals a one-process capture field by field, shard by shard (same checksums);
- a worker killed mid-range fails its range only, and `resume=True` reruns only that range, from the
  shards it had made durable, into a store equal to the one-process capture;
- sparsity, expert routing statistics and transcoder feature statistics folded on two workers and
  merged equal the one-process results (to 1e-9, counts exactly).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray
import torch
from gated_probe import capture_killed_at_gate

from workbench.cli import main
from workbench.corpus import windows_for
from workbench.errors import WorkbenchError
from workbench.experts.specialization import ExpertsSettings, run_experts
from workbench.models import load_model
from workbench.probes.capture import ActivationProbe, StoreSink, capture
from workbench.scale.capture import sharded_capture
from workbench.scale.cluster import Workers
from workbench.sparsity.run import SparsitySettings, run_sparsity
from workbench.store import StoreReader
from workbench.transcoders.features import feature_table
from workbench.transcoders.model import Transcoder, TranscoderConfig


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _shards(path: Path) -> list[tuple]:
    return [(s["start"], s["stop"], s["bytes"], s["xxh3_128"]) for s in StoreReader(path).shards]


def _same_store(a: Path, b: Path) -> None:
    """The same tokens, values and metadata, in the same order, in shards of the same bytes."""
    ra, rb = StoreReader(a), StoreReader(b)
    assert ra.complete and rb.complete and len(ra) == len(rb) > 0
    assert list(ra.fields.values()) == list(rb.fields.values())
    assert _shards(a) == _shards(b)
    va, vb = ra.read(slice(None)), rb.read(slice(None))
    assert va.keys() == vb.keys()
    for k in va:
        assert torch.equal(va[k], vb[k]), k
    assert ra.verify() == [] and rb.verify() == []


def test_a_sharded_capture_equals_the_one_process_capture(cluster, tmp_path, capsys):
    common = ["capture", "--hooks", "blocks.*.hook_resid_post", "--routing", "--attention"]
    common += ["--attention-summaries", "--shard-tokens", "128", "--model", "tiny-moe", "--tokens", "1024"]
    common += ["--context", "32", "--batch-size", "4", "--seed", "3", "--json"]
    assert main(common + ["--out", str(tmp_path / "one")]) == 0
    one = json.loads(capsys.readouterr().out)
    assert main(common + ["--out", str(tmp_path / "two"), "--workers", "2"]) == 0
    two = json.loads(capsys.readouterr().out)
    _same_store(tmp_path / "one" / "store", tmp_path / "two" / "store")
    manifest = StoreReader(tmp_path / "two" / "store").manifest
    assert [(r["start"], r["stop"], r["status"]) for r in manifest["ranges"]] == [
        (0, 512, "complete"),
        (512, 1024, "complete"),
    ]
    assert manifest["shards"][4]["file"] == "ranges/00001/shard-00000.safetensors"
    assert (one["tokens"], one["shards"], one["fields"]) == (two["tokens"], two["shards"], two["fields"])
    for key in ("attention_entropy", "expert_load"):  # the report's reducers, folded on the workers
        assert one[key].keys() == two[key].keys() and one[key]
        for layer in one[key]:
            assert two[key][layer] == pytest.approx(one[key][layer], rel=1e-9)
    # a single writer may not resume a coordinated store
    fields = list(StoreReader(tmp_path / "two" / "store").fields.values())
    with pytest.raises(WorkbenchError, match="coordinated store"):
        StoreSink(tmp_path / "two" / "store", {}, resume=True).open(fields, 1024)


def test_a_killed_worker_leaves_its_range_to_resume(cluster, tmp_path):
    handle = load_model("tiny-relu", device="cpu", progress=False)
    windows = windows_for(handle, context=32, n_tokens=1024, seed=5)
    hooks = ["blocks.1.mlp.hook_post", "blocks.2.hook_resid_post"]
    per_shard = 2 * 32  # a shard is one batch of 2 windows: 8 shards a range
    info = {"test": "kill"}
    one = tmp_path / "one"
    capture(
        handle, windows, [ActivationProbe(hooks)], StoreSink(one, info, tokens_per_shard=per_shard), 2, False
    )

    store, gate = tmp_path / "two", tmp_path / "gate"
    workers = Workers(2, max_retries=0)  # no automatic rerun: the kill must surface
    error = capture_killed_at_gate(
        lambda probe: sharded_capture(
            handle,
            windows,
            [probe],
            store,
            info,
            workers=workers,
            batch_size=2,
            tokens_per_shard=per_shard,
            progress=False,
        ),
        hooks,
        gate,
    )
    assert isinstance(error, WorkbenchError), error
    assert "--resume" in str(error) and "1 of 2 capture ranges failed" in str(error)

    manifest = json.loads((store / "store.json").read_text())
    status = [r["status"] for r in manifest["ranges"]]
    assert sorted(status) == ["complete", "pending"] and manifest["status"] == "writing"
    killed = status.index("pending")
    partial = json.loads((store / manifest["ranges"][killed]["folder"] / "store.json").read_text())
    assert 0 < partial["tokens_written"] < partial["n_tokens"]  # durable shards before the kill
    assert len(StoreReader(store)) == (512 if killed == 1 else 0)  # readers see the complete prefix

    outcome = sharded_capture(
        handle,
        windows,
        [ActivationProbe(hooks)],
        store,
        info,
        workers=workers,
        batch_size=2,
        tokens_per_shard=per_shard,
        resume=True,
        progress=False,
    )
    assert outcome.ran == [killed]
    resumed = json.loads((store / manifest["ranges"][killed]["folder"] / "store.json").read_text())
    assert resumed["resumes"][0]["tokens_done"] == partial["tokens_written"]  # went on from its shards
    _same_store(one, store)


def _numbers_close(a, b, path="") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _numbers_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _numbers_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-9, abs=1e-12, nan_ok=True), path
    else:
        assert a == b, path


def test_reducer_analyses_on_two_workers_equal_one_process(cluster):
    workers = Workers(2)
    relu = load_model("tiny-relu", device="cpu", progress=False)
    windows = windows_for(relu, context=32, n_tokens=1024, seed=1)
    settings = SparsitySettings(inputs=("heldout", "random"), batch_size=4)
    one = run_sparsity(relu, windows, settings, progress=False).to_dict()
    two = run_sparsity(relu, windows, settings, progress=False, workers=workers).to_dict()
    one.pop("provenance"), two.pop("provenance")
    _numbers_close(one, two)
    assert one["tokens"] == 1024 and sum(one["density_histograms"]["0"]) == 1024

    tc = Transcoder(TranscoderConfig(256, 256, 512, "topk", k=16, layer=2), seed=0)
    one = feature_table(relu, tc, windows, batch_size=4, top_n=5, progress=False)
    two = feature_table(relu, tc, windows, batch_size=4, top_n=5, progress=False, workers=workers)
    for name in ("density", "mean_activation", "max_activation", "histograms"):
        _numbers_close(getattr(one, name), getattr(two, name), name)
    assert [[v for v, *_ in row] for row in one.top] == [[v for v, *_ in row] for row in two.top]

    moe = load_model("tiny-moe", device="cpu", progress=False)
    windows = windows_for(moe, context=32, n_tokens=1024, seed=2)
    settings = ExpertsSettings(batch_size=4, baseline=True)
    one = run_experts(moe, windows, settings, progress=False)
    two = run_experts(moe, windows, settings, progress=False, workers=workers)
    _numbers_close(one.layers, two.layers)
    _numbers_close(one.baseline_layers, two.baseline_layers)
    assert one.layers[0]["tokens"] == 1024


def test_bench_scale_reports_both_parts_with_their_ratios(cluster):
    from workbench.bench import BENCHMARKS

    relu = load_model("tiny-relu", device="cpu", progress=False)
    windows = windows_for(relu, context=32, n_tokens=512, seed=0)
    body = BENCHMARKS.get("scale")(relu, windows, batch_size=4, repeats=1, train_tokens=2048, width=256)
    capture_rates = body["capture"]["tokens_per_s"]
    assert set(capture_rates) == {"in_process_1_thread", "ray_1_worker", "ray_2_workers"}
    assert all(rate > 0 for rate in capture_rates.values())
    ratio = capture_rates["ray_2_workers"] / (2 * capture_rates["ray_1_worker"])
    assert body["capture"]["efficiency_2_workers"] == pytest.approx(ratio)
    train = body["train"]
    assert train["nproc_1"]["tokens"] == train["nproc_2"]["tokens"] == 2048
    assert train["efficiency_2_training_loop"] == pytest.approx(
        train["nproc_2"]["tokens_per_s_training_loop"] / (2 * train["nproc_1"]["tokens_per_s_training_loop"])
    )
