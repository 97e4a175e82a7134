"""Oracles for the pruning core: scope, exact counts, N:M groups, ties, wanda, bitwise restore, forward."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from tiny_checkpoints import KINDS
from workbench.errors import WorkbenchError
from workbench.essential.pruning import PrunableMatrix, PruningPlan, prunable_matrices, pruned, scores
from workbench.models import load_model

LEVELS = (0.0, 0.1, 0.55, 0.9, 1.0)


@pytest.fixture(scope="module")
def handles(checkpoints):
    return {kind: load_model(str(checkpoints[kind]), device="cpu", progress=False) for kind in KINDS}


def _expected_scope(kind: str) -> set[str]:
    """Hand-written: the in-scope HF names of the tiny checkpoints (2 blocks, 4 experts)."""
    if kind == "gpt2":
        leaves = ["attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"]
        return {f"transformer.h.{i}.{leaf}" for i in range(2) for leaf in leaves}
    leaves = [f"self_attn.{p}_proj.weight" for p in "qkvo"]
    if kind == "llama":
        leaves += [f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
    else:
        leaves += [f"mlp.experts.{p}[{e}]" for p in ("gate_up_proj", "down_proj") for e in range(4)]
    if kind == "qwen2moe":
        leaves += [f"mlp.shared_expert.{p}_proj.weight" for p in ("gate", "up", "down")]
    return {f"model.layers.{i}.{leaf}" for i in range(2) for leaf in leaves}


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().view(torch.int32)  # float32 models: compare bit patterns


def _snapshot(handle) -> dict[str, torch.Tensor]:
    return {n: _bits(p) for n, p in handle.model.original_model.named_parameters()}


def _assert_bitwise_equal(before: dict, handle) -> None:
    after = _snapshot(handle)
    assert after.keys() == before.keys()
    for name, bits in before.items():
        assert torch.equal(bits, after[name]), name


def _tokens() -> torch.Tensor:
    return torch.randint(0, 4096, (2, 12), generator=torch.Generator().manual_seed(0))


def _fake(name: str, w: torch.Tensor, in_dim: int = 1) -> PrunableMatrix:
    return PrunableMatrix(name, torch.nn.Parameter(w.clone()), (), in_dim, "mlp_in", 0)


@pytest.mark.parametrize("kind", KINDS)
def test_scope_and_untouched_parameters(handles, kind):
    handle = handles[kind]
    matrices = prunable_matrices(handle)
    assert {m.name for m in matrices} == _expected_scope(kind)
    assert len(matrices) == len(_expected_scope(kind))
    assert all(m.in_dim == (0 if kind == "gpt2" else 1) for m in matrices)
    if kind == "gpt2":
        assert {m.kind for m in matrices} == {"attn_qkv", "attn_o", "mlp_in", "mlp_out"}

    before = _snapshot(handle)
    plan = PruningPlan.build(matrices, scores(matrices, "magnitude"), "global")
    in_scope = {id(m.param) for m in matrices}
    with pruned(matrices, plan.masks(0.5)):
        after = _snapshot(handle)
        # GPT-2's bridge also lists q/k/v/qkv/o: views of c_attn / c_proj, so they change with them
        aliases = (".attn.q.", ".attn.k.", ".attn.v.", ".attn.qkv.", ".attn.o.") if kind == "gpt2" else ()
        untouched = [
            n
            for n, p in handle.model.original_model.named_parameters()
            if id(p) not in in_scope and not any(a in n for a in aliases)
        ]
        for name in untouched:
            assert torch.equal(before[name], after[name]), name
        text = " ".join(n.replace("._original_component", "") for n in untouched)
        parts = ["lm_head", "wte", "ln_1", ".bias"] if kind == "gpt2" else ["lm_head", "embed_tokens", "norm"]
        parts += [".self_attn.q_proj.bias"] if kind == "qwen2moe" else []
        for part in parts:
            assert part in text
        if kind in ("mixtral", "qwen2moe"):
            assert "mlp.gate." in text
        if kind == "qwen2moe":
            assert "shared_expert_gate" in text
        for m in matrices:  # every in-scope matrix changed somewhere
            assert (m.weight == 0).any(), m.name
    _assert_bitwise_equal(before, handle)


@pytest.mark.parametrize("kind", KINDS)
def test_exact_counts_global_and_layerwise(handles, kind):
    matrices = prunable_matrices(handles[kind])
    sc = scores(matrices, "magnitude")
    total = sum(m.numel() for m in matrices)
    glob = PruningPlan.build(matrices, sc, "global")
    layer = PruningPlan.build(matrices, sc, "layerwise")
    for s in LEVELS:
        masks = glob.masks(s)
        assert sum(int((~k).sum()) for k in masks) == round(s * total) == glob.n_pruned(s)
        with pruned(matrices, masks):  # random weights have no exact zeros: zeros == pruned
            assert sum(int((m.weight == 0).sum()) for m in matrices) == round(s * total)
        masks = layer.masks(s)
        for m, k in zip(matrices, masks, strict=True):
            assert k.shape == m.shape and k.dtype == torch.bool
            assert int((~k).sum()) == round(s * m.numel()), (m.name, s)
        assert layer.n_pruned(s) == sum(round(s * m.numel()) for m in matrices)


def _groups(mask: torch.Tensor, in_dim: int, m: int) -> torch.Tensor:
    rows = mask if in_dim == 1 else mask.T  # [out, in]
    return rows.reshape(rows.shape[0], -1, m)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8)])
def test_n_m_every_group(handles, kind, n, m):
    matrices = prunable_matrices(handles[kind])
    sc = scores(matrices, "magnitude")
    plan = PruningPlan.build(matrices, sc, f"{n}:{m}")
    masks = plan.masks(1 - n / m)
    for mat, keep, s in zip(matrices, masks, sc, strict=True):
        groups = _groups(keep, mat.in_dim, m)
        assert (groups.sum(-1) == n).all(), mat.name
        kept = torch.where(groups, _groups(s, mat.in_dim, m), torch.inf).amin(-1)
        dropped = torch.where(~groups, _groups(s, mat.in_dim, m), -torch.inf).amax(-1)
        assert (dropped <= kept).all()
    assert plan.n_pruned(1 - n / m) == sum(int((~k).sum()) for k in masks)
    assert all(k.all() for k in plan.masks(0.0))
    with pytest.raises(WorkbenchError):
        plan.masks(0.3)


def test_n_m_gpt2_conv1d_groups_run_along_dim0(handles):
    """GPT-2 Conv1D weight is [in, out]: groups of 4 consecutive *rows* within one column."""
    (mat,) = [m for m in prunable_matrices(handles["gpt2"]) if m.name == "transformer.h.0.mlp.c_fc.weight"]
    w = mat.weight
    assert tuple(w.shape) == (32, 64)
    keep = PruningPlan.build([mat], scores([mat], "magnitude"), "2:4").masks(0.5)[0]
    for col in (0, 17, 63):
        for g in range(0, 32, 4):
            top = set((w[g : g + 4, col].abs().argsort(descending=True)[:2] + g).tolist())
            assert set(torch.nonzero(keep[g : g + 4, col]).flatten().add(g).tolist()) == top
    assert not (keep.reshape(32, 16, 4).sum(-1) == 2).all()  # grouping along dim 1 would be wrong


def test_n_m_refuses_indivisible_input_and_bad_patterns():
    mat = _fake("w", torch.randn(4, 6))
    with pytest.raises(WorkbenchError, match="not divisible"):
        PruningPlan.build([mat], scores([mat], "magnitude"), "2:4")
    for bad in ("4:2", "0:4", "half"):
        with pytest.raises(WorkbenchError):
            PruningPlan.build([mat], scores([mat], "magnitude"), bad)


@pytest.mark.parametrize("kind", KINDS)
def test_magnitude_global_prunes_smallest(handles, kind):
    matrices = prunable_matrices(handles[kind])
    plan = PruningPlan.build(matrices, scores(matrices, "magnitude"), "global")
    for s in (0.1, 0.55):
        masks = plan.masks(s)
        w = torch.cat([m.weight.abs().flatten() for m in matrices])
        keep = torch.cat([k.flatten() for k in masks])
        assert w[~keep].max() <= w[keep].min()


def test_ties_lowest_flat_index_first():
    a = _fake("a", torch.tensor([[1.0, -1.0, 1.0, 2.0], [1.0, 0.5, -1.0, 1.0]]))
    b = _fake("b", torch.tensor([[1.0, 1.0], [-1.0, 0.5]]))
    plan = PruningPlan.build([a, b], scores([a, b], "magnitude"), "global")
    # order: the two 0.5 (a[5], b[3]), then the ties of 1.0 by flat index: a0 a1 a2 a4 a6 a7 b0 b1 b2
    masks = plan.masks(0.5)  # 12 weights -> 6 pruned: a5, b3, a0, a1, a2, a4
    assert (~masks[0]).flatten().tolist() == [True, True, True, False, True, True, False, False]
    assert (~masks[1]).flatten().tolist() == [False, False, False, True]
    assert plan.masks(0.5)[0].equal(masks[0])  # deterministic
    layer = PruningPlan.build([a, b], scores([a, b], "magnitude"), "layerwise").masks(0.5)
    assert (~layer[0]).flatten().tolist() == [True, True, True, False, False, True, False, False]
    assert (~layer[1]).flatten().tolist() == [True, False, False, True]


def test_random_scores_are_seeded():
    mats = [_fake("a", torch.randn(8, 8)), _fake("b", torch.randn(4, 8))]
    one, again, other = (
        scores(mats, "random", seed=1),
        scores(mats, "random", seed=1),
        scores(mats, "random", 2),
    )
    assert all(x.equal(y) for x, y in zip(one, again, strict=True))
    assert not one[0].equal(other[0])
    with pytest.raises(WorkbenchError):
        scores(mats, "bogus")


def test_wanda_uses_input_norms():
    linear = _fake("lin", torch.ones(4, 8))  # [out, in]: norms index dim 1
    conv = _fake("conv", torch.ones(8, 4), in_dim=0)  # Conv1D [in, out]: norms index dim 0
    rising, falling = torch.arange(1.0, 9.0), torch.arange(8.0, 0.0, -1.0)
    for mat in (linear, conv):
        cols = []
        for norms in (rising, falling):
            sc = scores([mat], "wanda", input_norms={mat.name: norms})
            keep = PruningPlan.build([mat], sc, "layerwise").masks(0.5)[0]
            kept_inputs = keep.all(dim=1 - mat.in_dim)  # input features whose weights all stayed
            cols.append(torch.nonzero(kept_inputs).flatten().tolist())
        assert cols == [[4, 5, 6, 7], [0, 1, 2, 3]]
        assert scores([mat], "magnitude")[0].equal(
            scores([mat], "wanda", input_norms={mat.name: torch.ones(8)})[0]
        )
    with pytest.raises(WorkbenchError, match="input_norms"):
        scores([linear], "wanda")
    with pytest.raises(WorkbenchError, match="length 8"):
        scores([linear], "wanda", input_norms={"lin": torch.ones(4)})


def test_wanda_on_model_changes_which_weights_go(handles):
    matrices = prunable_matrices(handles["llama"])
    ones = {m.name: torch.ones(m.shape[m.in_dim]) for m in matrices}
    gen = torch.Generator().manual_seed(0)
    skewed = {m.name: torch.rand(m.shape[m.in_dim], generator=gen) for m in matrices}
    magnitude = PruningPlan.build(matrices, scores(matrices, "magnitude"), "global").masks(0.5)
    flat = PruningPlan.build(matrices, scores(matrices, "wanda", input_norms=ones), "global").masks(0.5)
    wanda = PruningPlan.build(matrices, scores(matrices, "wanda", input_norms=skewed), "global").masks(0.5)
    assert all(x.equal(y) for x, y in zip(magnitude, flat, strict=True))
    assert not all(x.equal(y) for x, y in zip(magnitude, wanda, strict=True))


@pytest.mark.parametrize("kind", KINDS)
def test_restore_bitwise_and_logits(handles, kind):
    handle = handles[kind]
    matrices = prunable_matrices(handle)
    tokens = _tokens()
    with torch.no_grad():
        dense = handle.logits(tokens)
    before = _snapshot(handle)
    masks = PruningPlan.build(matrices, scores(matrices, "random", seed=3), "layerwise").masks(0.7)
    with torch.no_grad(), pruned(matrices, masks):
        assert not torch.allclose(handle.logits(tokens), dense)
    _assert_bitwise_equal(before, handle)
    with pytest.raises(RuntimeError, match="boom"), pruned(matrices, masks):
        raise RuntimeError("boom")
    _assert_bitwise_equal(before, handle)
    with pytest.raises(WorkbenchError), pruned(matrices, [*masks[:-1], masks[-1].T]):  # bad last mask
        pass
    _assert_bitwise_equal(before, handle)
    with torch.no_grad():
        assert torch.equal(handle.logits(tokens), dense)


@pytest.mark.parametrize("kind", KINDS)
def test_pruned_forward_equals_hand_masked_hf_model(handles, checkpoints, kind):
    handle = handles[kind]
    matrices = prunable_matrices(handle)
    reference = AutoModelForCausalLM.from_pretrained(str(checkpoints[kind])).eval()
    pattern = "2:4" if kind == "gpt2" else "global"
    plan = PruningPlan.build(matrices, scores(matrices, "magnitude"), pattern)
    masks = plan.masks(0.5)
    with torch.no_grad():
        for m, keep in zip(matrices, masks, strict=True):
            base, _, expert = m.name.partition("[")
            target = reference.get_parameter(base)
            target = target[int(expert[:-1])] if expert else target
            assert target.shape == keep.shape
            target[~keep] = 0.0
        tokens = _tokens()
        expected = reference(tokens).logits
        with pruned(matrices, masks):
            got = handle.logits(tokens)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_rowwise_prunes_exactly_per_output_row(checkpoints, kind):
    handle = load_model(str(checkpoints[kind]), progress=False)
    matrices = prunable_matrices(handle)
    plan = PruningPlan.build(matrices, scores(matrices, "magnitude"), "rowwise")
    for s in (0.0, 0.3, 0.5, 0.9):
        masks = plan.masks(s)
        total = 0
        for m, keep in zip(matrices, masks, strict=True):
            rows = keep if m.in_dim == 1 else keep.T  # [out, in]
            pruned_per_row = (~rows).sum(-1)
            assert (pruned_per_row == round(s * rows.shape[1])).all()
            w = (m.weight if m.in_dim == 1 else m.weight.T).abs()
            for r in range(rows.shape[0]):  # magnitude order holds within each row
                if 0 < pruned_per_row[r] < rows.shape[1]:
                    assert w[r][~rows[r]].max() <= w[r][rows[r]].min()
            total += int(pruned_per_row.sum())
        assert total == plan.n_pruned(s)
