"""The attention viewer and the expert explorer, driven from Python, against independent computations:
head metrics and patterns from a plain Hugging Face forward with eager attention (`output_attentions`),
routing from a brute-force router softmax / top-k on the router's input, masked-expert metrics from
`ReplaySession.apply` of the same edits; Shift-click and expert clicks linked to an EditExplorer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from workbench.errors import WorkbenchError
from workbench.models import load_model
from workbench.models.hooks import hooks_attached
from workbench.replay import ReplaySession
from workbench.replay.edits import ExpertMask, HeadMask, SublayerSkip

TEXT = "def add(a, b):\n    return a + b\n\n# the sum of two numbers\nprint(add(2, 3))"
FIELDS = ("ce_base", "ce_edited", "ce_delta", "kl", "top1_agreement", "resid_deviation", "first_layer")


@pytest.fixture(scope="module")
def relu():
    return load_model("tiny-relu", device="cpu", progress=False)


@pytest.fixture(scope="module")
def moe():
    return load_model("tiny-moe", device="cpu", progress=False)


@pytest.fixture(scope="module")
def llama(checkpoints):
    return load_model(str(checkpoints["llama"]), device="cpu", progress=False)


@pytest.fixture(scope="module")
def qwen2moe(checkpoints):
    return load_model(str(checkpoints["qwen2moe"]), device="cpu", progress=False)


def ids_of(handle, text: str = TEXT) -> torch.Tensor:
    return torch.tensor([handle.tokenizer(text, add_special_tokens=False)["input_ids"]])


def eager_patterns(handle, text: str = TEXT) -> list[torch.Tensor]:
    """Per layer [head, query, key]: a fresh Hugging Face model from the same folder, eager attention."""
    hf = AutoModelForCausalLM.from_pretrained(handle.folder, attn_implementation="eager").eval()
    with torch.no_grad():
        out = hf(ids_of(handle, text), output_attentions=True)
    return [a[0].double() for a in out.attentions]


def same_replay(result, expected) -> None:
    assert result.edits == expected.edits
    for name in FIELDS:
        assert getattr(result, name) == pytest.approx(getattr(expected, name), abs=1e-6), name


# --- the attention viewer -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "fused"), [("relu", False), ("relu", True), ("llama", False), ("llama", True)]
)
def test_head_metrics_and_patterns_equal_eager_attention(request, monkeypatch, model, fused):
    """`fused`: as if the model's attention never materialised its pattern (hook_pattern never fires), so
    the probe recomputes every pattern from queries and keys."""
    from workbench.widgets import AttentionViewer

    handle = request.getfixturevalue(model)
    if fused:
        monkeypatch.setattr("workbench.probes.attention.probing_pass", lambda handle, hooks: None)
    viewer = AttentionViewer(handle, TEXT)
    try:
        result = viewer.wait()
        assert viewer.error is None
        n_layers = handle.facts.n_layers
        assert result.recomputed == (list(range(n_layers)) if fused else [])
        patterns = eager_patterns(handle)
        entropy = [(-(p * p.clamp_min(1e-300).log()).sum(-1)).mean(-1).tolist() for p in patterns]
        first = [p[..., 0].mean(-1).tolist() for p in patterns]
        assert np.allclose(result.entropy, entropy, atol=1e-5)
        assert np.allclose(result.first_token, first, atol=1e-6)
        assert result.metric == "entropy" and result.values == result.entropy
        assert np.allclose(np.frombuffer(viewer.grid.values, np.float32), np.ravel(entropy), atol=1e-5)
        viewer.grid.click(n_layers - 1, 2)
        result = viewer.wait()
        assert result.focus == (n_layers - 1, 2) and viewer.grid.focus == [n_layers - 1, 2]
        shown = np.frombuffer(viewer.pattern.pattern, np.float32).reshape(len(viewer.tokens), -1)
        assert np.allclose(shown, patterns[n_layers - 1][2].numpy(), atol=1e-5)
        assert viewer.pattern.tokens == [handle.tokenizer.decode([t]) for t in ids_of(handle)[0].tolist()]
    finally:
        viewer.close()


def test_recomputed_patterns_when_positions_equal_heads(llama, monkeypatch):
    """The bridge's rotary hooks give [batch, head, pos, d]: a text of exactly n_heads tokens is read
    head-first too."""
    from workbench.widgets import AttentionViewer

    text = "print(x)"
    assert ids_of(llama, text).shape[1] == llama.facts.n_heads
    monkeypatch.setattr("workbench.probes.attention.probing_pass", lambda handle, hooks: None)
    viewer = AttentionViewer(llama, text)
    try:
        viewer.wait()
        assert viewer.recomputed == list(range(llama.facts.n_layers))
        for layer, eager in enumerate(eager_patterns(llama, text)):
            for head in range(llama.facts.n_heads):
                assert np.allclose(viewer.pattern_of(layer, head), eager[head].numpy(), atol=1e-5)
    finally:
        viewer.close()


def test_patterns_over_the_memory_budget_are_captured_on_demand(relu, monkeypatch):
    from workbench.widgets import AttentionViewer, attention_viewer

    kept = AttentionViewer(relu, TEXT)
    monkeypatch.setattr(attention_viewer, "PATTERN_BUDGET_BYTES", 0)
    lean = AttentionViewer(relu, TEXT)
    try:
        assert kept._patterns and not lean._patterns  # summaries only, then one head at a time
        assert np.allclose(lean.wait().entropy, kept.wait().entropy, atol=1e-6)
        assert np.allclose(lean.result.first_token, kept.result.first_token, atol=1e-6)
        lean.show_head(2, 1)
        lean.wait()
        assert lean.error is None and np.allclose(lean.pattern_of(2, 1), kept.pattern_of(2, 1), atol=1e-6)
        shown = np.frombuffer(lean.pattern.pattern, np.float32)
        assert np.allclose(shown, kept.pattern_of(2, 1).ravel(), atol=1e-6)
    finally:
        kept.close()
        lean.close()


def test_viewer_controls_edits_result_and_errors(relu):
    from workbench.widgets import AttentionViewer

    viewer = AttentionViewer(relu, TEXT, metric="first_token")
    try:
        result = viewer.wait()
        assert result.metric == "first_token" and result.values == result.first_token
        assert np.allclose(np.frombuffer(viewer.grid.values, np.float32), np.ravel(result.first_token))
        viewer.metric.value = "entropy"
        assert viewer.wait().values == viewer.result.entropy
        # Shift-click without an explorer: the viewer's own mask set, with a message that says so
        viewer.grid.click(1, 2, shift=True)
        viewer.grid.click(1, 0, shift=True)
        viewer.grid.click(3, 3, shift=True)
        assert viewer.edits == [HeadMask(1, (0, 2)), HeadMask(3, (3,))]
        assert viewer.grid.marked == [[1, 0], [1, 2], [3, 3]]
        assert "link an EditExplorer" in viewer.status.value
        viewer.grid.click(3, 3, shift=True)  # a second Shift-click unmasks
        assert viewer.edits == [HeadMask(1, (0, 2))]
        viewer.edits = [{"kind": "head_mask", "layer": 0, "heads": [1]}]
        assert viewer.edits == [HeadMask(0, (1,))] and viewer.grid.marked == [[0, 1]]
        with pytest.raises(WorkbenchError, match="masks heads only"):
            viewer.edits = [SublayerSkip(0, "mlp")]
        # .result can be set: metric and focused head
        viewer.result = {"metric": "first_token", "focus": [2, 3]}
        assert viewer.result.metric == "first_token" and viewer.result.focus == (2, 3)
        assert viewer.result.to_dict()["values"] == viewer.result.first_token
        with pytest.raises(WorkbenchError, match="another text"):
            viewer.result = {"tokens": ["x"], "focus": [0, 0]}
        # errors show in the widget (a click from the browser never raises)
        viewer.grid.click(7, 0)
        assert viewer.error is not None and "layers 0..3" in viewer.error
        with pytest.raises(WorkbenchError):
            viewer.show_head(0, 9)
    finally:
        viewer.close()
    with pytest.raises(WorkbenchError, match="metric"):
        AttentionViewer(relu, TEXT, metric="max")
    with pytest.raises(WorkbenchError, match="Give the text"):
        AttentionViewer(relu)


def test_shift_click_masks_the_head_in_a_linked_edit_explorer(relu):
    from workbench.widgets import AttentionViewer, EditExplorer

    explorer = EditExplorer(relu, TEXT)
    viewer = AttentionViewer(relu, explorer=explorer)  # the explorer's text
    try:
        assert viewer.tokens == [
            explorer.session.token_text(t) for t in explorer.session.engine.tokens[0].tolist()
        ]
        viewer.grid.click(1, 2, shift=True)
        assert explorer.edits == [HeadMask(1, (2,))] == viewer.edits
        assert viewer.grid.marked == [[1, 2]] == explorer.head_grid.marked
        same_replay(explorer.wait(), ReplaySession.from_text(relu, TEXT).apply([HeadMask(1, (2,))]))
        explorer.head_grid.click(0, 3)  # a mask set in the explorer shows in the viewer
        assert viewer.grid.marked == [[0, 3], [1, 2]]
        viewer.edits = [HeadMask(2, (0, 1))]
        assert explorer.edits == [HeadMask(2, (0, 1))]
        same_replay(explorer.wait(), ReplaySession.from_text(relu, TEXT).apply([HeadMask(2, (0, 1))]))
        viewer.grid.click(2, 0, shift=True)
        viewer.grid.click(2, 1, shift=True)
        assert explorer.edits == [] and viewer.grid.marked == []
        assert "edit explorer" in viewer.status.value
    finally:
        viewer.close()
        explorer.close()
    with pytest.raises(WorkbenchError, match="another text"):
        AttentionViewer(relu, "some other text", explorer=explorer)


# --- the expert explorer --------------------------------------------------------------------------------


def brute_force_routing(handle) -> dict[int, dict[str, torch.Tensor]]:
    """Per routed layer: logits = W_gate · x on the router's input x, softmax, top-k (re-normalised as the
    config says), from a fresh Hugging Face model of the same folder."""
    hf = AutoModelForCausalLM.from_pretrained(handle.folder).eval()
    inputs: dict[int, torch.Tensor] = {}
    gates = {i: layer.mlp.gate for i, layer in enumerate(hf.model.layers) if hasattr(layer.mlp, "gate")}
    hooks = [(g, lambda m, i, o, n=n: inputs.__setitem__(n, i[0].detach())) for n, g in gates.items()]
    with hooks_attached(hooks), torch.no_grad():
        hf(ids_of(handle))
    k = handle.facts.experts_per_token
    renormalise = getattr(hf.config, "norm_topk_prob", True)
    out = {}
    for n, gate in gates.items():
        x = inputs[n].reshape(-1, inputs[n].shape[-1]).double()
        logits = x @ gate.weight.detach().double().T
        probs = torch.softmax(logits, dim=-1)
        weights, experts = probs.topk(k, dim=-1)
        if renormalise:
            weights = weights / weights.sum(-1, keepdim=True)
        out[n] = {"logits": logits, "weights": weights, "experts": experts}
    return out


@pytest.mark.parametrize("model", ["moe", "qwen2moe"])
def test_routing_load_and_specialization_equal_a_brute_force_router(request, model):
    from workbench.experts.labels import token_class
    from workbench.widgets import ExpertExplorer

    handle = request.getfixturevalue(model)
    widget = ExpertExplorer(handle, TEXT)
    try:
        widget.wait()
        routing, oracle = widget.routing, brute_force_routing(handle)
        e, k = handle.facts.n_experts, handle.facts.experts_per_token
        assert routing.layers == sorted(oracle)
        token_ids = ids_of(handle)[0].tolist()
        classes = [token_class(handle.tokenizer.decode([t])) for t in token_ids]
        for layer, want in oracle.items():
            got_order = np.argsort(routing.experts[layer], axis=1)
            want_order = want["experts"].argsort(-1)
            got_experts = np.take_along_axis(routing.experts[layer], got_order, 1)
            assert np.array_equal(got_experts, want["experts"].gather(-1, want_order).numpy())
            got_weights = np.take_along_axis(routing.weights[layer], got_order, 1)
            assert np.allclose(got_weights, want["weights"].gather(-1, want_order).numpy(), atol=1e-5)
            assert np.allclose(routing.logits[layer], want["logits"].numpy(), atol=1e-4)
            matrix = np.zeros((len(token_ids), e))
            np.put_along_axis(matrix, want["experts"].numpy(), want["weights"].numpy(), axis=1)
            assert np.allclose(routing.weight_matrix(layer), matrix, atol=1e-5)
            chosen = matrix > 0
            assert np.allclose(routing.load(layer), chosen.mean(0)) and sum(
                routing.load(layer)
            ) == pytest.approx(k)
            spec = routing.stats[layer]["spec"]["token_class"]
            for cls, values in spec.items():
                rows = [i for i, c in enumerate(classes) if c == cls]
                assert np.allclose(values, chosen[rows].mean(0)), (layer, cls)
            assert set(spec) == set(classes)
        assert sorted(routing.shared_gate) == (routing.layers if model == "qwen2moe" else [])
        first = routing.layers[0]
        shown = np.frombuffer(widget.routing_grid.values, np.float32).reshape(len(token_ids), e)
        assert np.allclose(shown, routing.weight_matrix(first))
        loads = np.frombuffer(widget.mask_grid.values, np.float32).reshape(len(routing.layers), e)
        assert np.allclose(loads, [routing.load(x) for x in routing.layers])
        assert "load f_e" in widget.stats.value and "NMI(expert; token_class)" in widget.stats.value
        widget.layer.value = routing.layers[-1]
        shown = np.frombuffer(widget.routing_grid.values, np.float32).reshape(len(token_ids), e)
        assert np.allclose(shown, routing.weight_matrix(routing.layers[-1]))
        widget.routing_grid.click(3, 0)
        assert f"token 3 {routing.tokens[3]!r}"[:8] in widget.status.value.replace("&#x27;", "'")
    finally:
        widget.close()


def test_masked_expert_metrics_equal_replay_apply(moe):
    from workbench.widgets import ExpertExplorer

    widget = ExpertExplorer(moe, TEXT)
    session = ReplaySession.from_text(moe, TEXT)
    try:
        base = widget.wait()
        assert base.edits == [] and base.kl == pytest.approx(0.0, abs=1e-9)
        widget.mask_grid.click(1, 3)
        widget.toggle_expert(2, 0)
        widget.toggle_expert(2, 5)
        assert widget.edits == [ExpertMask(1, (3,), "reroute"), ExpertMask(2, (0, 5), "reroute")]
        assert widget.mask_grid.marked == [[1, 3], [2, 0], [2, 5]]
        same_replay(widget.wait(), session.apply(widget.edits))
        assert f"{widget.result.kl:.4f}" in widget.metrics.value
        widget.mode.value = "drop"
        assert {e.mode for e in widget.edits} == {"drop"}
        same_replay(widget.wait(), session.apply(widget.edits))
        widget.edits = [{"kind": "expert_mask", "layer": 0, "experts": [1, 2], "mode": "reroute"}]
        assert widget.mode.value == "reroute" and widget.mask_grid.marked == [[0, 1], [0, 2]]
        same_replay(widget.wait(), session.apply([ExpertMask(0, (1, 2))]))
        other = session.apply([ExpertMask(3, (4,), "drop")])
        widget.result = other
        assert widget.result is other and widget.edits == [ExpertMask(3, (4,), "drop")]
        # rerouting needs k experts left: the refusal shows in the widget, and there is no result
        widget.edits = [ExpertMask(0, tuple(range(7)))]
        assert widget.wait() is None and "fewer than top-2" in widget.error
        widget.mask_grid.click(0, 0)  # back to a routable set
        assert widget.wait() is not None and widget.error is None
        with pytest.raises(WorkbenchError, match="masks experts only"):
            widget.edits = [HeadMask(0, (1,))]
        with pytest.raises(WorkbenchError, match="routes layers"):
            widget.toggle_expert(9, 0)
    finally:
        widget.close()


def test_expert_clicks_go_through_a_linked_edit_explorer(moe):
    from workbench.widgets import EditExplorer, ExpertExplorer

    explorer = EditExplorer(moe, TEXT)
    widget = ExpertExplorer(moe, explorer=explorer, mode="drop")
    try:
        assert explorer.expert_mode.value == "drop" and widget.session is explorer.session
        widget.mask_grid.click(1, 2)
        assert explorer.edits == [ExpertMask(1, (2,), "drop")] == widget.edits
        result = widget.wait()
        assert result is explorer.result
        same_replay(result, ReplaySession.from_text(moe, TEXT).apply([ExpertMask(1, (2,), "drop")]))
        assert widget.metrics.value == explorer.metrics.value
        explorer.expert_grid.click(0, 4)  # a mask set in the explorer shows in the expert explorer
        explorer.expert_mode.value = "reroute"
        assert widget.mode.value == "reroute" and widget.mask_grid.marked == [[0, 4], [1, 2]]
        widget.edits = [ExpertMask(3, (1,), "reroute")]
        assert explorer.edits == [ExpertMask(3, (1,), "reroute")]
        same_replay(widget.wait(), ReplaySession.from_text(moe, TEXT).apply(widget.edits))
    finally:
        widget.close()
        explorer.close()


def test_dense_models_are_refused(relu):
    from workbench.widgets import ExpertExplorer

    with pytest.raises(WorkbenchError, match="dense model: it has no experts"):
        ExpertExplorer(relu, TEXT)
    with pytest.raises(WorkbenchError, match="dense model"):
        ExpertExplorer(ReplaySession.from_text(relu, TEXT))
