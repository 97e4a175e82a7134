"""Replay oracle: for every edit kind and combinations, replay equals a full forward of the bridge with the
edit applied by hooks (an independent path: TransformerLens hooks on the Hugging Face modules)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from workbench.errors import WorkbenchError
from workbench.models import load_model
from workbench.replay import (
    ExpertMask,
    HeadMask,
    NeuronMask,
    ReplayEngine,
    ReplaySession,
    SublayerSkip,
    Threshold,
    TopK,
    TranscoderSplice,
    WeightPrune,
    dump_edits,
    edits_applied,
    load_edits,
    parse_edits,
)
from workbench.replay.effects import effects
from workbench.transcoders.files import save_transcoder
from workbench.transcoders.model import Transcoder, TranscoderConfig

ATOL = 2e-4


@pytest.fixture(scope="module")
def handles(checkpoints):
    """The tiny checkpoints with random biases and norm weights (they are 0 and 1 as written), so that
    every bias and norm path of replay is exercised; the bridge sees the same parameters."""
    loaded = {kind: load_model(str(path), device="cpu", progress=False) for kind, path in checkpoints.items()}
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for handle in loaded.values():
            for name, param in handle.model.original_model.named_parameters():
                if name.endswith("bias") or "norm" in name or ".ln_" in name:
                    param.add_(0.1 * torch.randn(param.shape, generator=gen))
    return loaded


def tokens_for(handle, batch=2, length=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, handle.facts.d_vocab, (batch, length), generator=gen)


def hooked_logits(handle, tokens, edits):
    with torch.inference_mode(), edits_applied(handle, edits):
        return handle.logits(tokens).float()


def assert_replay_matches(handle, edits, tokens=None):
    tokens = tokens_for(handle) if tokens is None else tokens
    engine = ReplayEngine(handle, tokens)
    replayed = engine.replay(edits)
    expected = hooked_logits(handle, tokens, edits)
    torch.testing.assert_close(replayed.trace.logits, expected, atol=ATOL, rtol=1e-4)
    assert (replayed.trace.logits - engine.base.logits).abs().max() > 1e-3, "the edit changed nothing"
    return engine, replayed


@pytest.mark.parametrize("kind", ["gpt2", "llama", "mixtral", "qwen2moe"])
def test_unedited_stack_equals_the_bridge(handles, kind):
    handle = handles[kind]
    tokens = tokens_for(handle)
    engine = ReplayEngine(handle, tokens)
    with torch.inference_mode():
        torch.testing.assert_close(engine.base.logits, handle.logits(tokens).float(), atol=ATOL, rtol=1e-4)


def _transcoder(tmp_path, handle, layer=1):
    d = handle.facts.d_model
    tc = Transcoder(TranscoderConfig(d_in=d, d_out=d, width=64, arch="topk", k=8, layer=layer), seed=3)
    with torch.no_grad():
        for p in tc.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_transcoder(tc, tmp_path / "tc")
    return str(tmp_path / "tc")


DENSE_EDITS = {
    "neuron_mask": lambda h: [NeuronMask(1, (0, 3, 5, 17))],
    "topk": lambda h: [TopK(1, 5)],
    "threshold": lambda h: [Threshold(0, 0.05)],
    "head_mask": lambda h: [HeadMask(1, (0, 2))],
    "head_mask_all": lambda h: [HeadMask(0, tuple(range(h.facts.n_heads)))],
    "skip_attn": lambda h: [SublayerSkip(1, "attn")],
    "skip_mlp": lambda h: [SublayerSkip(0, "mlp")],
    "prune_layerwise": lambda h: [WeightPrune(0.5, "layerwise", layer_list=(1,))],
    "prune_2_4": lambda h: [WeightPrune(0.5, "2:4", matrices=("mlp_in", "mlp_out"))],
    "prune_global_random": lambda h: [WeightPrune(0.3, "global", "random", seed=2)],
    "combined": lambda h: [
        HeadMask(0, (1,)),
        NeuronMask(1, (2, 4)),
        TopK(1, 7),
        SublayerSkip(0, "mlp"),
        WeightPrune(0.25, "rowwise", layer_list=(1,), matrices=("attn_o",)),
    ],
    "topk_then_threshold": lambda h: [Threshold(1, 0.02), TopK(1, 9), NeuronMask(1, (1,))],
}


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("name", sorted(DENSE_EDITS))
def test_replay_equals_hooked_forward(handles, kind, name):
    handle = handles[kind]
    assert_replay_matches(handle, DENSE_EDITS[name](handle))


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_transcoder_splice_replay(handles, kind, tmp_path):
    handle = handles[kind]
    path = _transcoder(tmp_path, handle)
    assert_replay_matches(handle, [TranscoderSplice(1, path), HeadMask(0, (3,))])


@pytest.mark.parametrize("kind", ["mixtral", "qwen2moe"])
@pytest.mark.parametrize("mode", ["reroute", "drop"])
def test_expert_mask_replay(handles, kind, mode):
    handle = handles[kind]
    edits = [ExpertMask(1, (0,), mode), ExpertMask(0, (2, 3) if mode == "drop" else (3,), mode)]
    _, replayed = assert_replay_matches(handle, edits)
    assert replayed.first_layer == 0
    assert_replay_matches(handle, [*edits, HeadMask(1, (1,)), WeightPrune(0.5, "layerwise", layer_list=(1,))])


def test_replay_starts_at_the_first_edited_layer(handles):
    handle = handles["llama"]
    engine = ReplayEngine(handle, tokens_for(handle))
    replayed = engine.replay([NeuronMask(1, (0,))])
    assert replayed.first_layer == 1
    assert replayed.trace.resid[1] is engine.base.resid[1]  # the cached prefix, not recomputed
    fx = effects(engine, replayed)
    assert fx.resid_deviation[0] == 0 and fx.resid_deviation[1] == 0 and fx.resid_deviation[2] > 0


def test_effects_against_brute_force(handles):
    handle = handles["gpt2"]
    tokens = tokens_for(handle)
    engine = ReplayEngine(handle, tokens)
    edits = [SublayerSkip(1, "mlp")]
    fx = effects(engine, engine.replay(edits), chosen=[5, 9])
    base, edited = engine.base.logits.double(), hooked_logits(handle, tokens, edits).double()
    p, q = base.softmax(-1), edited.softmax(-1)
    kl = (p * (p.log() - q.log())).sum(-1)
    ce = (
        lambda logits: torch.nn.functional.cross_entropy(  # noqa: E731
            logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)
        )
    )
    assert fx.ce_delta == pytest.approx(float(ce(edited) - ce(base)), abs=1e-4)
    torch.testing.assert_close(fx.kl.double(), kl, atol=1e-4, rtol=1e-3)
    assert float(fx.top1_agree.float().mean()) == pytest.approx(
        float((base.argmax(-1) == edited.argmax(-1)).float().mean())
    )
    torch.testing.assert_close(fx.logit_diff.double(), (edited - base)[..., [5, 9]], atol=1e-4, rtol=1e-4)


def test_ce_delta_is_exact_where_float32_means_are_not():
    """Losses of 6-12 nats, an edit worth 4e-4 nats: two float32 means lose the delta, float64 keeps it."""
    from workbench.replay.effects import Effects

    g = torch.Generator().manual_seed(0)
    base = 6 + 6 * torch.rand(8, 4095, generator=g)
    edited = base + 4e-4 * (1 + torch.randn(8, 4095, generator=g))
    pairs = zip(edited.flatten().tolist(), base.flatten().tolist(), strict=True)
    exact = math.fsum(e - b for e, b in pairs) / base.numel()  # Python floats: float64, exact sum
    float32 = float(edited.mean() - base.mean())
    assert abs(float32 - exact) / exact > 1e-3  # the case is hard: the old float32 way is off by 0.3 %
    fx = Effects(base, edited, torch.zeros(8, 4096), torch.ones(8, 4096, dtype=torch.bool), None, [])
    assert fx.ce_delta == pytest.approx(exact, rel=1e-12, abs=0)
    assert fx.summary()["ce_delta"] == fx.ce_delta
    exact_base = math.fsum(base.flatten().tolist()) / base.numel()
    assert fx.summary()["ce_base"] == pytest.approx(exact_base, rel=1e-12)


def test_generation_under_an_edit_matches_hooked_greedy(handles):
    handle = handles["llama"]
    prompt = tokens_for(handle, batch=1, length=5)
    edits = [HeadMask(1, (0, 1)), TopK(0, 4)]
    engine = ReplayEngine(handle, prompt)
    got = engine.generate(engine.compile(edits), 4)
    ids = prompt.clone()
    for _ in range(4):
        ids = torch.cat([ids, hooked_logits(handle, ids, edits)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert got.tolist() == ids[:, 5:].tolist()


def test_edits_round_trip_through_json(tmp_path):
    edits = [
        NeuronMask(2, (5, 1, 5)),
        TopK(0, 8),
        Threshold(1, 0.1),
        HeadMask(3, (2,)),
        ExpertMask(1, (4,), "drop"),
        SublayerSkip(0, "attn"),
        WeightPrune(0.5, "2:4", layer_list=(1, 2), matrices=("mlp_in",)),
        TranscoderSplice(2, "runs/tc"),
    ]
    text = json.dumps(dump_edits(edits))
    assert parse_edits(json.loads(text)) == edits
    (tmp_path / "e.json").write_text(json.dumps({"edits": dump_edits(edits)}))
    assert load_edits(tmp_path / "e.json") == edits
    assert json.loads(text)[0] == {"kind": "neuron_mask", "layer": 2, "neurons": [1, 5]}
    assert json.loads(text)[6]["layers"] == [1, 2]


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"kind": "neuron_masks", "layer": 0, "neurons": [1]}, "Did you mean 'neuron_mask'"),
        ({"kind": "topk", "layer": 0, "k": 4, "extra": 1}, "unknown field"),
        ({"kind": "skip", "layer": 0, "target": "block"}, "'attn' or 'mlp'"),
        ({"layer": 0}, "'kind' field"),
    ],
)
def test_bad_edit_json_says_what_to_do(bad, message):
    with pytest.raises(WorkbenchError, match=message):
        parse_edits(bad)


def test_model_specific_refusals(handles):
    gpt2, mixtral = handles["gpt2"], handles["mixtral"]
    engine = ReplayEngine(gpt2, tokens_for(gpt2))
    for edits, message in [
        ([NeuronMask(5, (0,))], "do not exist"),
        ([HeadMask(0, (9,))], "has heads"),
        ([ExpertMask(0, (1,))], "not a mixture-of-experts"),
        ([SublayerSkip(0, "mlp"), TopK(0, 3)], "skipped and also edited"),
    ]:
        with pytest.raises(WorkbenchError, match=message):
            engine.compile(edits)
    with pytest.raises(WorkbenchError, match="neuron edits do not apply"):
        ReplayEngine(mixtral, tokens_for(mixtral)).compile([NeuronMask(0, (1,))])


def test_session_apply_is_cached_and_generates(handles):
    handle = handles["gpt2"]
    session = ReplaySession(handle, tokens_for(handle, batch=1, length=10))
    edits = [{"kind": "skip", "layer": 1, "target": "attn"}]
    first = session.apply(edits)
    again = session.apply(edits)
    assert len(session.engine.cache.plans) == 1 and again.ce_delta == first.ce_delta
    assert first.to_dict()["kind"] == "replay" and set(first.charts()) == {"resid_deviation", "per_token_kl"}
    out = session.generate(edits, 3)
    assert len(out["base_ids"]) == 3 and len(out["edited_ids"]) == 3


def test_batches_merge_to_the_whole(handles):
    from workbench.replay.session import merged

    handle = handles["llama"]
    tokens = tokens_for(handle, batch=4)
    edits = [TopK(0, 6), HeadMask(1, (2,))]
    whole = ReplaySession(handle, tokens).apply(edits, chosen=[3])
    parts = merged([ReplaySession(handle, half).apply(edits, chosen=[3]) for half in tokens.split(2)])
    for name in ("ce_base", "ce_edited", "ce_delta", "kl", "top1_agreement"):
        assert getattr(parts, name) == pytest.approx(getattr(whole, name), abs=1e-5), name
    assert parts.resid_deviation == pytest.approx(whole.resid_deviation, abs=1e-5)
    assert parts.logit_diff == pytest.approx(whole.logit_diff, abs=1e-5) and parts.tokens == whole.tokens


@pytest.mark.parametrize(
    "kind, edits",
    [
        ("llama", [HeadMask(1, (0, 3)), TopK(0, 5), NeuronMask(1, (2,))]),
        ("gpt2", [HeadMask(0, (1,)), TopK(1, 9)]),
        ("mixtral", [ExpertMask(0, (1,), "reroute"), ExpertMask(1, (2,), "drop"), HeadMask(1, (2,))]),
        (
            "gpt2",
            [WeightPrune(0.5, "2:4"), WeightPrune(0.3, "layerwise", layer_list=(1,), matrices=("attn_o",))],
        ),
        ("llama", [WeightPrune(0.5, "2:4", layer_list=(0,)), WeightPrune(0.4, "rowwise", layer_list=(1,))]),
        ("llama", [WeightPrune(0.5, "2:4"), HeadMask(1, (1,)), TopK(0, 5)]),
    ],
)
def test_replay_through_the_triton_kernels(handles, kind, edits):
    """The engine with Triton forced (run by the interpreter on CPU) still equals the hooked model."""
    pytest.importorskip("triton")
    import os

    from workbench.replay.stack import Stack

    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1 before triton is imported")
    handle = handles[kind]
    tokens = tokens_for(handle)
    engine = ReplayEngine(handle, tokens, stack=Stack.of(handle, backend="triton"))
    with torch.inference_mode():
        torch.testing.assert_close(engine.base.logits, handle.logits(tokens).float(), atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(
        engine.replay(edits).trace.logits, hooked_logits(handle, tokens, edits), atol=ATOL, rtol=1e-4
    )


def test_pruned_projections_run_through_the_masked_matmul_kernels(handles, monkeypatch):
    """Where Triton runs, 2:4 edits use the N:M kernel and other patterns the block-masked one; on the
    CPU torch path the layer keeps its masked weights (the kernels' torch path is that same GEMM)."""
    import workbench.kernels.masked_matmul as mm
    from workbench.replay.stack import Stack

    pytest.importorskip("triton")

    calls = {"nm": 0, "block": 0}
    real_nm, real_block = mm.nm_matmul, mm.block_masked_matmul

    def nm(*args, **kwargs):
        calls["nm"] += 1
        return real_nm(*args, **kwargs)

    def block(*args, **kwargs):
        calls["block"] += 1
        return real_block(*args, **kwargs)

    monkeypatch.setattr("workbench.replay.pruned.nm_matmul", nm)
    monkeypatch.setattr("workbench.replay.pruned.block_masked_matmul", block)
    handle = handles["llama"]
    edits = [WeightPrune(0.5, "2:4", layer_list=(0,)), WeightPrune(0.3, "layerwise", layer_list=(1,))]
    assert_replay_matches(handle, edits)
    assert calls == {"nm": 0, "block": 0}  # CPU, automatic: dense GEMMs on the masked weights
    tokens = tokens_for(handle)
    engine = ReplayEngine(handle, tokens, stack=Stack.of(handle, backend="triton"))
    torch.testing.assert_close(
        engine.replay(edits).trace.logits, hooked_logits(handle, tokens, edits), atol=ATOL, rtol=1e-4
    )
    assert calls["nm"] == 7 and calls["block"] == 7  # q, k, v, o, gate, up, down in each layer


def test_generation_baseline_is_per_row(handles):
    handle = handles["gpt2"]
    session = ReplaySession(handle, tokens_for(handle, batch=2, length=6, seed=3))
    edits = [SublayerSkip(1, "mlp")]
    rows = [session.generate(edits, 3, row=row)["base_ids"] for row in (0, 1)]
    direct = [session.engine.generate(None, 3, session.engine.tokens[r : r + 1])[0].tolist() for r in (0, 1)]
    assert rows == direct


def test_dense_baseline_and_empty_edits_are_identities(handles):
    handle = handles["llama"]
    engine = ReplayEngine(handle, tokens_for(handle))
    for edits in ([], [WeightPrune(0.0, "2:4")]):
        replayed = engine.replay(edits)
        torch.testing.assert_close(replayed.trace.logits, engine.base.logits)
    session = ReplaySession(handle, tokens_for(handle))
    assert session.apply([]).kl == 0 and session.apply(NeuronMask(0, (1,))).first_layer == 0


def test_llama_mlp_biases(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=4096, mlp_bias=True, attention_bias=True,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") and "gate_proj" not in name:
                param.normal_(0, 0.2)
            elif name.endswith("gate_proj.bias"):
                param.zero_()
    model.save_pretrained(tmp_path / "m")
    from tiny_checkpoints import corpus_tokenizer

    corpus_tokenizer().save_pretrained(tmp_path / "m")
    handle = load_model(str(tmp_path / "m"), device="cpu", progress=False)
    assert_replay_matches(handle, [TopK(0, 5), NeuronMask(1, (3,)), HeadMask(1, (2,))])  # up/down biases
    with torch.no_grad():
        handle.model.original_model.model.layers[1].mlp.gate_proj.bias.normal_()
    with pytest.raises(WorkbenchError, match="bias on the gate projection"):
        ReplayEngine(handle, tokens_for(handle))


def test_transcoder_mismatch_is_refused(handles, tmp_path):
    handle = handles["gpt2"]
    engine = ReplayEngine(handle, tokens_for(handle))
    path = _transcoder(tmp_path, handle, layer=1)
    with pytest.raises(WorkbenchError, match="trained on layer 1"):
        engine.compile([TranscoderSplice(0, path)])
    small = Transcoder(TranscoderConfig(d_in=16, d_out=16, width=32, k=4, layer=1))
    save_transcoder(small, tmp_path / "small")
    with pytest.raises(WorkbenchError, match="another model"):
        engine.compile([TranscoderSplice(1, str(tmp_path / "small"))])


def test_hooked_edits_refuse_indices_out_of_range(handles):
    handle = handles["gpt2"]
    for edit in (NeuronMask(0, (-1,)), HeadMask(0, (7,))):
        with pytest.raises(WorkbenchError, match="has"), edits_applied(handle, [edit]):
            pass


def test_too_long_for_learned_positions(handles):
    handle = handles["gpt2"]  # 64 positions
    with pytest.raises(WorkbenchError, match="positions"):
        ReplayEngine(handle, tokens_for(handle, batch=1, length=65))
    engine = ReplayEngine(handle, tokens_for(handle, batch=1, length=60))
    with pytest.raises(WorkbenchError, match="positions"):
        engine.generate(None, 10)
