"""Oracle tests: captured values equal an independent Hugging Face forward with hand-registered hooks."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from tiny_checkpoints import KINDS
from workbench.corpus import load_corpus, make_windows
from workbench.errors import WorkbenchError
from workbench.models import load_model
from workbench.probes.capture import ActivationProbe, AttentionProbe, MemorySink, RoutingProbe, capture


def _windows(handle, n=3, context=16):
    return make_windows(load_corpus()[:4], handle.tokenizer, context, handle.separator_token_id).select(
        n * context
    )


def _hf_reference(folder, tokens, kind):
    """Plain HF forward (eager attention) with PyTorch hooks registered by hand on the HF modules."""
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    seen: dict[str, torch.Tensor] = {}
    handles = []
    layers = hf.transformer.h if kind == "gpt2" else hf.model.layers
    for i, layer in enumerate(layers):
        handles.append(
            layer.register_forward_hook(
                lambda m, inp, out, i=i: seen.__setitem__(
                    f"resid_post.{i}", out[0] if isinstance(out, tuple) else out
                )
            )
        )
        if kind == "gpt2":
            handles.append(
                layer.mlp.act.register_forward_hook(
                    lambda m, inp, out, i=i: seen.__setitem__(f"post.{i}", out)
                )
            )
        elif kind == "llama":
            handles.append(
                layer.mlp.down_proj.register_forward_hook(
                    lambda m, inp, out, i=i: seen.__setitem__(f"post.{i}", inp[0])
                )
            )
        else:
            handles.append(
                layer.mlp.gate.register_forward_hook(
                    lambda m, inp, out, i=i: seen.__setitem__(f"router.{i}", out)
                )
            )
            if hasattr(layer.mlp, "shared_expert_gate"):
                handles.append(
                    layer.mlp.shared_expert_gate.register_forward_hook(
                        lambda m, inp, out, i=i: seen.__setitem__(f"shared.{i}", out)
                    )
                )
    try:
        with torch.no_grad():
            out = hf(tokens, output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    return seen, out.attentions


@pytest.mark.parametrize("kind", KINDS)
def test_capture_equals_hand_hooked_forward(checkpoints, kind):
    handle = load_model(str(checkpoints[kind]), progress=False)
    windows = _windows(handle)
    moe = handle.facts.moe
    patterns = ["blocks.*.hook_resid_post"] + ([] if moe else ["blocks.*.mlp.hook_post"])
    probes = [ActivationProbe(patterns), AttentionProbe()] + ([RoutingProbe()] if moe else [])
    sink = capture(handle, windows, probes, MemorySink(), batch_size=2, progress=False)
    seen, attentions = _hf_reference(checkpoints[kind], windows.tokens, kind)
    n, ctx = windows.n_windows, windows.context
    assert torch.equal(sink.meta["token"], windows.tokens.flatten())
    assert torch.equal(sink.meta["window"], torch.arange(n).repeat_interleave(ctx))
    for layer in range(handle.facts.n_layers):
        resid = sink.values[f"blocks.{layer}.hook_resid_post"]
        torch.testing.assert_close(
            resid, seen[f"resid_post.{layer}"].reshape(n * ctx, -1), atol=1e-4, rtol=1e-4
        )
        if not moe:
            post = sink.values[f"blocks.{layer}.mlp.hook_post"]
            torch.testing.assert_close(post, seen[f"post.{layer}"].reshape(n * ctx, -1), atol=1e-5, rtol=1e-4)
        pattern = sink.values[f"attention.blocks.{layer}.pattern"].view(n, ctx, -1, ctx).transpose(1, 2)
        torch.testing.assert_close(pattern, attentions[layer], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(pattern.sum(-1), torch.ones_like(pattern.sum(-1)))
        if moe:
            base = f"routing.blocks.{layer}"
            logits, weights, indices = seen[f"router.{layer}"]
            torch.testing.assert_close(sink.values[f"{base}.router_logits"], logits.float())
            assert torch.equal(sink.values[f"{base}.topk_indices"], indices)
            torch.testing.assert_close(sink.values[f"{base}.topk_weights"], weights.float())
            top = sink.values[f"{base}.router_logits"].topk(handle.facts.experts_per_token, dim=-1).indices
            assert torch.equal(top.sort(-1).values, sink.values[f"{base}.topk_indices"].sort(-1).values)
            if f"shared.{layer}" in seen:
                torch.testing.assert_close(
                    sink.values[f"{base}.shared_expert_gate"], torch.sigmoid(seen[f"shared.{layer}"])
                )


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_recomputed_pattern_equals_eager_attention(checkpoints, kind):
    """The path for fast attention that never materialises a pattern: recompute from q and k."""
    handle = load_model(str(checkpoints[kind]), progress=False)
    windows = _windows(handle, n=2)
    probe = AttentionProbe(heads=[1, 3])
    probe.fields(handle, windows.context)
    probe._recompute = set(range(handle.facts.n_layers))  # as if hook_pattern never fired
    sink = capture(handle, windows, [probe], MemorySink(), progress=False)
    _, attentions = _hf_reference(checkpoints[kind], windows.tokens, kind)
    for layer in range(handle.facts.n_layers):
        got = sink.values[f"attention.blocks.{layer}.pattern"].view(2, windows.context, 2, -1).transpose(1, 2)
        torch.testing.assert_close(got, attentions[layer][:, [1, 3]], atol=1e-5, rtol=1e-4)


def test_attention_summaries(checkpoints):
    handle = load_model(str(checkpoints["gpt2"]), progress=False)
    windows = _windows(handle, n=2)
    full = capture(handle, windows, [AttentionProbe(layers=[1])], MemorySink(), progress=False)
    summary = capture(
        handle, windows, [AttentionProbe(layers=[1], summaries_only=True)], MemorySink(), progress=False
    )
    p = full.values["attention.blocks.1.pattern"]  # [tokens, head, key]
    s = summary.values["attention.blocks.1.summary"]  # [tokens, head, 3]
    entropy = -(p * p.clamp_min(1e-30).log()).sum(-1)
    torch.testing.assert_close(s[..., 0], entropy)
    torch.testing.assert_close(s[..., 1], p[..., 0])
    torch.testing.assert_close(s[..., 2], p.max(-1).values)
    assert torch.allclose(
        s[::16, :, 0], torch.zeros_like(s[::16, :, 0])
    )  # the first query attends to itself only


def _hook_count(handle) -> int:
    return sum(len(m._forward_hooks) for m in handle.model.modules())


def test_hooks_are_removed_on_exit_and_on_exception(checkpoints):
    handle = load_model(str(checkpoints["mixtral"]), progress=False)
    windows = _windows(handle)
    handle.logits(windows.tokens[:1])  # the bridge registers its own hooks on first use; count after that
    before = _hook_count(handle)
    probes = [ActivationProbe(["blocks.*.hook_resid_post"]), AttentionProbe(), RoutingProbe()]
    capture(handle, windows, probes, MemorySink(), progress=False)
    assert _hook_count(handle) == before

    class Exploding(MemorySink):
        def consume(self, values, meta):
            assert _hook_count(handle) > before  # attached while running
            raise RuntimeError("sink failed")

    with pytest.raises(RuntimeError, match="sink failed"):
        capture(handle, windows, probes, Exploding(), progress=False)
    assert _hook_count(handle) == before


def test_storage_dtype_and_layer_subset(checkpoints):
    handle = load_model(str(checkpoints["gpt2"]), progress=False)
    sink = capture(
        handle,
        _windows(handle),
        [ActivationProbe(["blocks.*.mlp.hook_post"], layers=[1], dtype="bfloat16")],
        MemorySink(),
        progress=False,
    )
    assert (
        list(sink.values) == ["blocks.1.mlp.hook_post"]
        and sink.values["blocks.1.mlp.hook_post"].dtype == torch.bfloat16
    )


def test_bad_input_is_explained(checkpoints):
    dense = load_model(str(checkpoints["gpt2"]), progress=False)
    with pytest.raises(
        WorkbenchError, match=r"matches no hook .* Nearest hook names: .*blocks\.0\.mlp\.hook_post"
    ):
        ActivationProbe(["blocks.0.mlp.hook_psot"]).fields(dense, 16)
    with pytest.raises(WorkbenchError, match=r"dense model: it has no router"):
        RoutingProbe().fields(dense, 16)
    with pytest.raises(WorkbenchError, match="Unknown dtype"):
        ActivationProbe(["blocks.*"], dtype="int8")
