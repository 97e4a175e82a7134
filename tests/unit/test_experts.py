"""Oracle tests for the experts analyses: routing counts, mutual information, expert masking, MoEfication."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from workbench.corpus import load_corpus, make_windows
from workbench.errors import WorkbenchError
from workbench.experts.information import entropy, mutual_information, normalised_mutual_information
from workbench.experts.labels import POSITION_EDGES, TOKEN_CLASSES, Labeller, token_class
from workbench.experts.masking import ExpertMask, experts_masked
from workbench.experts.moefication import MlpWeights, captured_shares, group_forward, group_scores
from workbench.experts.partition import balanced_kmeans, coactivation_groups, random_groups
from workbench.experts.specialization import routing_summary
from workbench.models import load_model


def _windows(handle, n=4, context=16):
    return make_windows(load_corpus()[:6], handle.tokenizer, context, handle.separator_token_id).select(
        n * context
    )


def _hf_router_logits(folder, tokens) -> dict[int, torch.Tensor]:
    """Router logits per layer from a plain Hugging Face forward, hooks registered by hand."""
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    seen = {}
    handles = [
        layer.mlp.gate.register_forward_hook(lambda m, i, out, n=n: seen.__setitem__(n, out[0].detach()))
        for n, layer in enumerate(hf.model.layers)
    ]
    with torch.no_grad():
        hf(tokens)
    for h in handles:
        h.remove()
    return seen


def test_routing_counts_match_a_brute_force_loop(checkpoints):
    handle = load_model(str(checkpoints["mixtral"]), progress=False)
    windows = _windows(handle)
    labels = ["domain", "token_class", "position", "token"]
    layers, labeller = routing_summary(handle, windows, labels, batch_size=2, progress=False)
    e, k = handle.facts.n_experts, handle.facts.experts_per_token
    logits = _hf_router_logits(checkpoints["mixtral"], windows.tokens)
    tokens = windows.tokens.flatten().tolist()
    domains = windows.domain.flatten().tolist()
    positions = windows.position.flatten().tolist()
    chosen = {
        layer: [sorted(range(e), key=lambda x, row=row: -row[x])[:k] for row in value.tolist()]
        for layer, value in logits.items()
    }
    for summary in layers:
        layer, picks = summary["layer"], chosen[summary["layer"]]
        n = len(picks)
        load = [sum(x in p for p in picks) / n for x in range(e)]
        assert summary["load"] == pytest.approx(load)
        cos = [[sum(a in p and b in p for p in picks) / n for b in range(e)] for a in range(e)]
        assert torch.allclose(torch.tensor(summary["coselection"]), torch.tensor(cos))
        entropies = []
        for row in logits[layer].tolist():
            z = sum(math.exp(v) for v in row)
            entropies.append(-sum(math.exp(v) / z * (v - math.log(z)) for v in row))
        assert summary["router_entropy_mean"] == pytest.approx(sum(entropies) / n, rel=1e-6)
        # spec(e, D) and NMI over assignments, each pair weighted 1/k, counted one token at a time
        bucket = [sum(p >= edge for edge in POSITION_EDGES) for p in positions]
        classes = [TOKEN_CLASSES.index(token_class(handle.tokenizer.decode([t]))) for t in tokens]
        for name, label in (("domain", domains), ("position", bucket), ("token_class", classes)):
            table = torch.zeros(e, labeller.size(name), dtype=torch.float64)
            for p, lab in zip(picks, label, strict=True):
                for x in p:
                    table[x, lab] += 1 / k
            assert summary["nmi"][name] == pytest.approx(_direct_nmi(table.tolist()), abs=1e-9)
            for cls_index, cls in enumerate(labeller.classes(name)):
                in_class = [p for p, lab in zip(picks, label, strict=True) if lab == cls_index]
                if in_class:
                    spec = [sum(x in p for p in in_class) / len(in_class) for x in range(e)]
                    assert summary["spec"][name][cls] == pytest.approx(spec)
        if summary["adjacent_nmi"] is not None:
            nxt = chosen[layer + 1]
            joint = torch.zeros(e, e, dtype=torch.float64)
            for p, q in zip(picks, nxt, strict=True):
                for a in p:
                    for b in q:
                        joint[a, b] += 1 / k**2
            assert summary["adjacent_nmi"] == pytest.approx(_direct_nmi(joint.tolist()), abs=1e-9)


def _direct_nmi(table: list[list[float]]) -> float:
    total = sum(map(sum, table))
    px = [sum(row) / total for row in table]
    py = [sum(col) / total for col in zip(*table, strict=True)]
    mi = sum(
        v / total * math.log(v / total / (px[i] * py[j]))
        for i, row in enumerate(table)
        for j, v in enumerate(row)
        if v > 0
    )
    hx = -sum(p * math.log(p) for p in px if p > 0)
    hy = -sum(p * math.log(p) for p in py if p > 0)
    return mi / min(hx, hy) if min(hx, hy) > 0 else 0.0


def test_mutual_information_matches_direct_computation():
    table = torch.tensor([[10.0, 2.0, 0.0], [1.0, 5.0, 7.0]])
    assert normalised_mutual_information(table) == pytest.approx(_direct_nmi(table.tolist()))
    assert entropy(torch.tensor([1.0, 1.0, 2.0])) == pytest.approx(
        -(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5))
    )
    independent = torch.outer(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 1.0, 1.0]))
    assert mutual_information(independent) == pytest.approx(0.0, abs=1e-12)
    assert normalised_mutual_information(torch.diag(torch.tensor([3.0, 1.0, 2.0]))) == pytest.approx(1.0)
    assert normalised_mutual_information(torch.tensor([[5.0, 3.0]])) == 0.0  # one side constant


class BruteForceMoe(nn.Module):
    """A Mixtral sparse-MoE block written out token by token, with experts masked by hand."""

    def __init__(self, block, masked: set[int], mode: str) -> None:
        super().__init__()
        self.block, self.masked, self.mode = block, masked, mode

    def forward(self, hidden):
        b, t, d = hidden.shape
        flat = hidden.reshape(-1, d)
        router, experts = self.block.gate, self.block.experts
        out = torch.zeros_like(flat)
        for n, h in enumerate(flat):
            logits = router.weight @ h
            order = sorted(range(len(logits)), key=lambda x: -float(logits[x]))
            k = router.top_k
            if self.mode == "reroute":
                picks = [x for x in order if x not in self.masked][:k]
                probs = torch.softmax(torch.stack([logits[x] for x in picks]), 0)  # renormalised top-k
                weights = dict(zip(picks, probs, strict=True))
            else:
                top = order[:k]
                probs = torch.softmax(torch.stack([logits[x] for x in top]), 0)
                kept = {x: p for x, p in zip(top, probs, strict=True) if x not in self.masked}
                total = sum(kept.values()) if kept else 1.0
                weights = {x: p / total for x, p in kept.items()}
            for x, w in weights.items():
                gate, up = (experts.gate_up_proj[x] @ h).chunk(2)
                out[n] += w * (experts.down_proj[x] @ (experts.act_fn(gate) * up))
        return out.reshape(b, t, d)


@pytest.mark.parametrize("mode", ["reroute", "drop"])
def test_expert_mask_matches_a_hand_edited_forward(checkpoints, mode):
    folder = checkpoints["mixtral"]
    handle = load_model(str(folder), progress=False)
    tokens = _windows(handle, n=2).tokens
    masks = [ExpertMask(0, (1,), mode), ExpertMask(1, (0, 3), mode)]
    with torch.no_grad():
        base = handle.logits(tokens)
        with experts_masked(handle, masks):
            edited = handle.logits(tokens)
        after = handle.logits(tokens)
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    for layer, masked in ((0, {1}), (1, {0, 3})):
        hf.model.layers[layer].mlp = BruteForceMoe(hf.model.layers[layer].mlp, masked, mode)
    with torch.no_grad():
        expected = hf(tokens).logits
    assert torch.allclose(edited, expected, atol=1e-4), (edited - expected).abs().max()
    assert not torch.allclose(edited, base, atol=1e-4)  # the mask changed something
    assert torch.equal(after, base)  # and left nothing behind


def test_expert_mask_refuses_bad_input(checkpoints):
    moe = load_model(str(checkpoints["mixtral"]), progress=False)
    with pytest.raises(WorkbenchError, match="do not exist"), experts_masked(moe, [ExpertMask(0, (9,))]):
        pass
    with (
        pytest.raises(WorkbenchError, match="fewer than top-2"),
        experts_masked(moe, [ExpertMask(0, (0, 1, 2))]),
    ):
        pass
    with pytest.raises(WorkbenchError, match="mode"):
        ExpertMask(0, (1,), "zero")
    dense = load_model(str(checkpoints["gpt2"]), progress=False)
    with pytest.raises(WorkbenchError, match="not routed"), experts_masked(dense, [ExpertMask(0, (1,))]):
        pass
    assert ExpertMask.from_dict(ExpertMask(1, (2, 3), "drop").to_dict()) == ExpertMask(1, (2, 3), "drop")


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_moefied_mlp_equals_dense_mlp_with_other_neurons_masked(checkpoints, kind):
    handle = load_model(str(checkpoints[kind]), progress=False)
    tokens = _windows(handle, n=2).tokens
    layer, n_groups, k = 1, 4, 2
    labels = random_groups(handle.facts.d_mlp, n_groups, seed=3)
    chosen = torch.stack([torch.randperm(n_groups)[:k] for _ in range(tokens.numel())])
    kept = (labels[None, :] == chosen[:, :, None]).any(1).float()  # [T, d_mlp]
    seen = {}

    def mask_neurons(value, hook):
        return value * kept.reshape(value.shape)

    def keep(name):
        def hook(value, hook):
            seen[name] = value.detach().reshape(-1, value.shape[-1])

        return hook

    with torch.no_grad():
        handle.model.run_with_hooks(
            tokens,
            fwd_hooks=[
                (f"blocks.{layer}.mlp.hook_in", keep("in")),
                (f"blocks.{layer}.mlp.hook_post", mask_neurons),
                (f"blocks.{layer}.mlp.hook_out", keep("out")),
            ],
        )
        moefied = group_forward(MlpWeights.of(handle, layer), labels, seen["in"], chosen)
    dense_masked = seen["out"]
    assert torch.allclose(moefied, dense_masked, atol=1e-5), (moefied - dense_masked).abs().max()


def test_captured_shares_reach_one_with_every_group():
    torch.manual_seed(0)
    a = torch.randn(50, 12)
    labels = random_groups(12, 4)
    membership = torch.nn.functional.one_hot(labels, 4).float()
    w_out = torch.randn(12, 6)
    scores = group_scores(a, membership)
    assert torch.allclose(scores.sum(1), a.clamp_min(0).sum(1))
    group_out = torch.stack([a[:, labels == g] @ w_out[labels == g] for g in range(4)], dim=1)
    mass, output = captured_shares(scores, group_out, scores.argsort(1, descending=True))
    assert torch.allclose(mass[:, -1], torch.ones(50)) and torch.allclose(
        output[:, -1], torch.ones(50), atol=1e-5
    )
    assert (mass[:, 1:] >= mass[:, :-1] - 1e-6).all()  # more groups never capture less mass
    best = scores.max(1).values / scores.sum(1)
    assert torch.allclose(mass[:, 0], best)


def test_partitions_are_balanced_and_find_planted_clusters():
    torch.manual_seed(0)
    centres = torch.randn(4, 16) * 5
    points = torch.cat([c + 0.1 * torch.randn(6, 16) for c in centres])
    labels = balanced_kmeans(points, 4, seed=1)
    assert torch.bincount(labels).tolist() == [6, 6, 6, 6]
    for block in labels.reshape(4, 6):
        assert len(set(block.tolist())) == 1  # each planted cluster is one group
    firing = torch.zeros(200, 12)
    for g in range(3):  # neurons 4g..4g+3 fire together
        firing[torch.rand(200) < 0.3, 4 * g : 4 * g + 4] = 1
    co = firing.T @ firing
    groups = coactivation_groups(co, 3, seed=0)
    assert torch.bincount(groups).tolist() == [4, 4, 4]
    for block in groups.reshape(3, 4):
        assert len(set(block.tolist())) == 1
    assert torch.bincount(random_groups(10, 3)).tolist() == [4, 3, 3]


def test_token_classes_and_labeller():
    assert [token_class(t) for t in (" the", "42", " (", "\n  ", "x1", "")] == [
        "letters",
        "digits",
        "punctuation",
        "whitespace",
        "mixed",
        "whitespace",
    ]
    with pytest.raises(WorkbenchError, match="Unknown label"):
        Labeller.build(["colour"], ["code"], None, 10)
