"""The training data path: the plain Hugging Face modules give the bridge's hook activations, cached
pairs equal recomputed ones, training windows follow the seed; the benchmark's dead ratio."""

from __future__ import annotations

import pytest
import torch

from workbench.bench.transcoder import dead_ratio
from workbench.errors import WorkbenchError
from workbench.models import load_model
from workbench.transcoders.data import mlp_pairs_of, model_pairs
from workbench.transcoders.direct import DirectPairs, cpu_has_native_bfloat16, pairs_dtype
from workbench.transcoders.run import training_windows


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_direct_pairs_equal_the_bridge_hooks(checkpoints, kind):
    handle = load_model(str(checkpoints[kind]), device="cpu", progress=False)
    tokens = torch.randint(0, handle.facts.d_vocab, (3, 16), generator=torch.Generator().manual_seed(0))
    for layer in range(handle.facts.n_layers):
        x, y = DirectPairs(handle, layer)(tokens)
        x_ref, y_ref = mlp_pairs_of(handle, layer, tokens)  # blocks.L.mlp.hook_in / hook_out
        assert x.shape == x_ref.shape == (48, handle.facts.d_model) and y.shape == y_ref.shape
        for ours, ref in ((x, x_ref), (y, y_ref)):
            assert ref.abs().max() > 1e-3  # a comparison of real activations, not of zeros
            assert (ours - ref).norm() <= 1e-6 * ref.norm(), (layer, (ours - ref).abs().max())
            assert (ours - ref).abs().max() <= 1e-5 * ref.abs().max()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_bfloat16_pairs_stay_within_a_few_percent_of_float32(checkpoints, kind):
    handle = load_model(str(checkpoints[kind]), device="cpu", progress=False)
    tokens = torch.randint(0, handle.facts.d_vocab, (4, 32), generator=torch.Generator().manual_seed(0))
    layer = handle.facts.n_layers - 1  # the error of every earlier layer's matmuls has reached it
    exact = DirectPairs(handle, layer)(tokens)
    rounded = DirectPairs(handle, layer, torch.bfloat16)(tokens)
    for ours, ref in zip(rounded, exact, strict=True):
        assert ours.dtype == torch.float32 and ours.shape == ref.shape
        error = (ours - ref).norm() / ref.norm()
        assert 1e-5 < error < 3e-2, error  # the matmuls did run in bfloat16 (8 bits of mantissa), no worse
        spread = (ref - ref.mean(0)).pow(2).sum()
        assert (ours - ref).pow(2).sum() < 1e-3 * spread  # a pair error far below any transcoder's FVU


def test_pairs_dtype_auto_is_bfloat16_only_where_the_hardware_computes_it():
    flags = "processor\t: 0\nflags\t\t: fpu sse2 avx2 {}\nbugs\t\t: none\n"
    assert cpu_has_native_bfloat16(flags.format("avx512f avx512_bf16"))
    assert cpu_has_native_bfloat16(flags.format("amx_tile amx_bf16"))
    assert not cpu_has_native_bfloat16(flags.format("avx512f"))  # emulated bfloat16 is slower than float32
    assert not cpu_has_native_bfloat16("")
    assert pairs_dtype("float32", "cpu") == torch.float32 and pairs_dtype("bfloat16", "cpu") == torch.bfloat16
    native = torch.bfloat16 if cpu_has_native_bfloat16() else torch.float32
    assert pairs_dtype("auto", "cpu") == native
    with pytest.raises(WorkbenchError, match="--pairs-dtype"):
        pairs_dtype("float16", "cpu")


def test_direct_pairs_share_the_model_weights(gpt2_handle):
    direct = DirectPairs(gpt2_handle, 0)
    ours = {p.data_ptr() for p in direct.base.parameters()}
    theirs = {p.data_ptr() for p in gpt2_handle.model.parameters()}
    assert ours <= theirs  # nothing copied: the truncated model reads the bridge's tensors
    assert len(direct.base.h if hasattr(direct.base, "h") else direct.base.layers) == 1  # stops at the layer


def test_training_windows_are_shuffled_by_the_seed(gpt2_handle):
    orders = [training_windows(gpt2_handle, corpus="pydocs", context=32, seed=s).tokens for s in (0, 0, 1)]
    assert torch.equal(orders[0], orders[1])  # the same seed, the same order
    assert not torch.equal(orders[0], orders[2])  # another seed, another order
    assert torch.equal(orders[0].sort(0).values, orders[2].sort(0).values) or (
        sorted(map(tuple, orders[0].tolist())) == sorted(map(tuple, orders[2].tolist()))
    )  # the same windows, each once
    for seed in (0, 1):  # with either seed, the first batch mixes both domains
        windows = training_windows(gpt2_handle, corpus="pydocs", context=32, seed=seed)
        first = next(model_pairs(gpt2_handle, windows, 0, batch_size=64, buffer_tokens=64 * 32, seed=seed))
        domains = windows.domain[: first.cursor].flatten().long()
        assert set(domains.tolist()) == set(range(len(windows.domains)))


def test_cached_pairs_equal_recomputed_ones_and_skip_the_model(gpt2_handle, monkeypatch):
    windows = training_windows(gpt2_handle, corpus="pydocs", context=32, seed=0)
    windows = windows.select(32 * 24, seed=0)  # 24 windows: three passes below
    calls = {"n": 0}
    forward = DirectPairs.__call__

    def counted(self, tokens):
        calls["n"] += 1
        return forward(self, tokens)

    monkeypatch.setattr(DirectPairs, "__call__", counted)
    steps = 3 * windows.n_tokens // 64
    runs = {}
    for cache in (False, True):
        calls["n"] = 0
        batches = model_pairs(
            gpt2_handle, windows, 0, 64, buffer_tokens=256, windows_per_forward=4, cache=cache
        )
        runs[cache] = [next(batches) for _ in range(steps)]
        runs[f"calls {cache}"] = calls["n"]
    assert runs["calls True"] == 24 // 4  # one pass through the model, then the cache
    assert runs["calls False"] > 2 * runs["calls True"]
    for a, b in zip(runs[False], runs[True], strict=True):
        assert a.cursor == b.cursor
        assert torch.allclose(a.x, b.x, atol=1e-6) and torch.allclose(a.y, b.y, atol=1e-6)


def test_dead_ratio_of_the_benchmark():
    assert dead_ratio(0.05, 0.1) == 0.5
    assert dead_ratio(0.0, 0.0) == 1.0
    assert dead_ratio(0.1, 0.0) > 1
