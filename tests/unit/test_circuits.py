"""Attribution oracle: along a path where the model is linear (norm scales and attention patterns
frozen), a feature's attribution equals the change of the target when the feature is ablated,
measured by a hand-written GPT-2 forward pass."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from workbench.corpus import load_corpus, make_windows
from workbench.errors import WorkbenchError
from workbench.models import load_model
from workbench.transcoders.circuits import Target, attribute, connection_scores
from workbench.transcoders.model import Transcoder, TranscoderConfig


def _transcoders(d: int) -> dict[int, Transcoder]:
    out = {}
    for layer in (0, 1):
        tc = Transcoder(TranscoderConfig(d, d, 48, "topk", k=6, layer=layer), seed=layer + 1)
        with torch.no_grad():
            tc.W_enc.mul_(4.0)
            tc.b_enc.fill_(0.05)
            tc.b_dec.normal_(0, 0.1)
        out[layer] = tc
    return out


def _layer_norm(x, ln, sigma=None):
    mean = x.mean(-1, keepdim=True)
    if sigma is None:
        sigma = ((x - mean).pow(2).mean(-1, keepdim=True) + ln.eps).sqrt()
    return (x - mean) / sigma * ln.weight + ln.bias, sigma


def _attention(x, attn, n_heads, pattern=None):
    t, d = x.shape
    q, k, v = (x @ attn.c_attn.weight + attn.c_attn.bias).split(d, dim=-1)
    heads = lambda m: m.reshape(t, n_heads, d // n_heads).transpose(0, 1)  # noqa: E731
    if pattern is None:
        scores = heads(q) @ heads(k).transpose(1, 2) / math.sqrt(d // n_heads)
        scores = scores.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf"))
        pattern = scores.softmax(-1)
    out = (pattern @ heads(v)).transpose(0, 1).reshape(t, d)
    return out @ attn.c_proj.weight + attn.c_proj.bias, pattern


def _hand_forward(hf, tokens, tcs, feature_layer, feature, position, ablate=None, frozen=None):
    """GPT-2 by hand with MLP 0 replaced by its transcoder; returns (target pre-activation, frozen values)."""
    frozen = dict(frozen or {})
    h0, h1 = hf.transformer.h
    n_heads = hf.config.n_head
    x = hf.transformer.wte.weight[tokens] + hf.transformer.wpe.weight[: len(tokens)]
    a, _ = _layer_norm(x, h0.ln_1)
    x = x + _attention(a, h0.attn, n_heads)[0]
    m, _ = _layer_norm(x, h0.ln_2)
    out = tcs[0](m)
    z = tcs[0].dense(out.encoded).clone()
    if ablate is not None:
        z[ablate] = 0.0
    x = x + z @ tcs[0].W_dec + tcs[0].b_dec
    a, frozen["s1"] = _layer_norm(x, h1.ln_1, frozen.get("s1"))
    attn, frozen["p1"] = _attention(a, h1.attn, n_heads, frozen.get("p1"))
    x = x + attn
    m, frozen["s2"] = _layer_norm(x, h1.ln_2, frozen.get("s2"))
    tc = tcs[feature_layer]
    return float(m[position] @ tc.W_enc[:, feature] + tc.b_enc[feature]), frozen


@pytest.mark.parametrize("through_heads", [True, False])
def test_attribution_equals_ablation_where_the_model_is_linear(checkpoints, through_heads):
    folder = checkpoints["gpt2"]
    handle = load_model(str(folder), progress=False)
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokens = make_windows(load_corpus()[:2], handle.tokenizer, 12, handle.separator_token_id).tokens[0]
    tcs = _transcoders(hf.config.n_embd)
    t = 9
    with torch.no_grad():
        z1 = tcs[1].features(torch.randn(1, hf.config.n_embd))  # any feature index works as a target
    target = Target("feature", position=t, index=int(z1.argmax()), layer=1)
    result = attribute(handle, tokens, tcs, target, through_heads=through_heads, spliced=(0,), top_k=10_000)
    with torch.no_grad():
        base, frozen = _hand_forward(hf, tokens, tcs, 1, target.index, t)
        assert result.target_value == pytest.approx(base, abs=1e-4)
        features = [n for n in result.nodes if n["kind"] == "feature"]
        checked = 0
        for node in features[:12]:
            ablated, _ = _hand_forward(
                hf, tokens, tcs, 1, target.index, t, ablate=(node["position"], node["feature"]), frozen=frozen
            )
            expected = base - ablated
            if not through_heads:  # the direct path alone: z_i · f_dec,i · g, g the frozen-norm pull-back
                assert node["position"] == t
                ln2 = hf.transformer.h[1].ln_2
                g = tcs[1].W_enc[:, target.index] * ln2.weight / frozen["s2"][t]
                expected = node["activation"] * float(tcs[0].W_dec[node["feature"]] @ (g - g.mean()))
            assert node["attribution"] == pytest.approx(expected, abs=1e-4)
            checked += 1
        assert checked >= 6
        if through_heads:
            assert any(n["position"] != t for n in features)  # heads carry earlier positions' features
    assert result.errors == [{"layer": 0, "attribution": 0.0}]  # spliced: the transcoder is the MLP


def test_error_term_and_connection_scores(checkpoints):
    handle = load_model(str(checkpoints["gpt2"]), progress=False)
    tokens = torch.arange(10, 22)
    tcs = _transcoders(handle.facts.d_model)
    result = attribute(handle, tokens, tcs, Target("logit", position=5, index=7), top_k=50)
    assert len(result.errors) == 2 and all(e["attribution"] != 0 for e in result.errors)
    assert {n["kind"] for n in result.nodes} == {"feature", "error"}
    scores = connection_scores(handle, tcs[0], tcs[1], feature=3, top=5)
    gamma = handle.model.blocks[1].ln2.original_component.weight.detach()
    enc = tcs[1].W_enc[:, 3] * gamma
    brute = (tcs[0].W_dec @ (enc - enc.mean())).detach()
    assert [s["upstream"] for s in scores] == brute.abs().topk(5).indices.tolist()
    assert scores[0]["score"] == pytest.approx(float(brute[scores[0]["upstream"]]), abs=1e-5)
    with pytest.raises(WorkbenchError, match="before"):
        connection_scores(handle, tcs[1], tcs[0])
