"""Merging is part of every reducer's contract: reducers of disjoint token ranges, merged in range order,
equal the reducer that saw all the tokens (to 1e-9; counts and histograms exactly). No Ray here: the
ranges are folded one after the other in this process (tests/integration/test_scale_ray.py fans out)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from workbench.capturing import AttentionEntropyReducer, ExpertLoadReducer
from workbench.corpus import load_corpus, make_windows
from workbench.essential.wanda import SquareSumReducer
from workbench.experts.labels import Labeller
from workbench.experts.moefication import CoactivationReducer, RouterDataReducer
from workbench.experts.routing_stats import RoutingStats, RoutingStatsReducer
from workbench.models import load_model
from workbench.probes.capture import RoutingProbe
from workbench.probes.sinks import add_state, merge_all
from workbench.scale.fold import fold, window_ranges
from workbench.sparsity.definitions import Definition
from workbench.sparsity.density import measure
from workbench.store.ranges import plan_ranges
from workbench.transcoders.features import fold_features
from workbench.transcoders.model import Transcoder, TranscoderConfig

ROOT = Path(__file__).resolve().parents[2]


def _windows(handle, n=6, context=16):
    docs = load_corpus()[:6]
    return make_windows(docs, handle.tokenizer, context, handle.separator_token_id).select(n * context)


def _close(a, b, path="") -> None:
    """Equal structures of tensors and numbers: integer tensors exactly, floats to 1e-9 relative."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=path)
        else:
            assert torch.equal(a, b), path
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), path
    else:
        assert a == b, path


def test_density_reducers_of_two_ranges_merge_into_the_whole(checkpoints):
    handle = load_model(str(checkpoints["gpt2"]), device="cpu", progress=False)
    windows = _windows(handle)
    spec = Definition.parse("exact_zero")
    whole = measure(handle, windows, spec, None, batch_size=2, progress=False)
    parts = [
        measure(handle, windows.part(lo, hi), spec, None, batch_size=2, progress=False)
        for lo, hi in ((0, 2), (2, 6))
    ]
    assert [p.tokens for p in parts] == [2 * windows.context, 4 * windows.context]  # really parts
    merged = merge_all(parts)
    for name in ("histogram", "firing", "domain_active", "domain_tokens", "tokens"):
        _close(getattr(merged, name), getattr(whole, name), name)
    _close(merged.layer_stats(), whole.layer_stats())
    assert whole.tokens == windows.n_tokens


def test_routing_stats_of_two_ranges_merge_into_the_whole(checkpoints):
    handle = load_model(str(checkpoints["mixtral"]), device="cpu", progress=False)
    windows = _windows(handle)
    labeller = Labeller.build(
        ["domain", "token_class", "position", "token"],
        windows.domains,
        handle.tokenizer,
        handle.facts.d_vocab,
    )

    def folded(w):
        reducer = RoutingStatsReducer(
            RoutingStats(handle.facts.n_experts, handle.facts.experts_per_token, labeller)
        )
        return fold(handle, w, [RoutingProbe()], [reducer], batch_size=2, progress=False)[0]

    whole = folded(windows)
    merged = merge_all([folded(windows.part(0, 4)), folded(windows.part(4, 6))])
    assert sorted(merged.stats.layers) == sorted(whole.stats.layers)
    for layer, counts in whole.stats.layers.items():
        mine = merged.stats.layers[layer]
        for name in type(counts).additive:
            _close(getattr(mine, name), getattr(counts, name), f"layer {layer} {name}")
    _close(merged.stats.summary(), whole.stats.summary())


def test_feature_statistics_of_two_ranges_merge_into_the_whole(checkpoints):
    handle = load_model(str(checkpoints["gpt2"]), device="cpu", progress=False)
    windows = _windows(handle)
    d = handle.facts.d_model
    tc = Transcoder(TranscoderConfig(d, d, 64, "topk", k=8, layer=1), seed=1)
    whole = fold_features(handle, windows, tc, batch_size=2, top_n=5)
    merged = merge_all([fold_features(handle, windows.part(lo, hi), tc, 2, 5) for lo, hi in ((0, 2), (2, 6))])
    for name in ("fires", "act_sum", "hist", "top_values"):
        _close(getattr(merged, name), getattr(whole, name), name)
    # where a top value is tied (zeros of a feature that fired fewer than N times, equal inputs), either
    # token is right; every other top value sits at the same token
    values = whole.top_values
    tied = (values[:, :, None] == values[:, None, :]).sum(-1) > 1
    untied = (values > 0) & ~tied
    assert untied.sum() > 100
    assert torch.equal(merged.top_where[untied], whole.top_where[untied])
    assert int(whole.top_where.max()) >= 2 * windows.context  # top tokens of the second part: global indices


def test_sum_reducers_merge_on_random_batches():
    """The reducers whose state is plain sums or kept rows, on synthetic batches split 3 + 2."""
    torch.manual_seed(0)
    batches = []
    for _ in range(5):
        values = {
            "attention.blocks.0.summary": torch.rand(7, 4, 3),
            "routing.blocks.1.topk_indices": torch.randint(0, 6, (7, 2)),
            "blocks.0.mlp.hook_in": torch.randn(7, 5),
            "blocks.0.mlp.hook_post": torch.randn(7, 8),
        }
        batches.append((values, {"token": torch.arange(7)}))
    makers = [
        AttentionEntropyReducer,
        lambda: ExpertLoadReducer(6),
        SquareSumReducer,
        lambda: CoactivationReducer([0]),
        lambda: RouterDataReducer({0: torch.eye(8)[:, :2]}),
    ]
    for make in makers:
        whole, first, second = make(), make(), make()
        for i, (values, meta) in enumerate(batches):
            whole.update(values, meta)
            (first if i < 3 else second).update(values, meta)
        first.merge(second)
        _close(vars(first), vars(whole), type(whole).__name__)


def test_merging_refuses_reducers_of_other_settings():
    with pytest.raises(ValueError, match="cannot merge"):
        add_state(torch.zeros(3), torch.zeros(4))
    a, b = ExpertLoadReducer(4), ExpertLoadReducer(5)
    values = {"routing.blocks.0.topk_indices": torch.tensor([[0, 1]])}
    a.update(values, {"token": torch.zeros(1)})
    b.update(values, {"token": torch.zeros(1)})
    with pytest.raises(ValueError, match="cannot merge"):
        a.merge(b)
    with pytest.raises(TypeError):
        a.merge(SquareSumReducer())


def _reducer_classes() -> list[tuple[str, ast.ClassDef]]:
    """Every class of the workbench with a reducer's `update(self, values, meta)`."""
    found, seen = [], set()
    for top in ("workbench", "probes"):
        for path in sorted((ROOT / top).rglob("*.py")):
            real = path.resolve()
            if real in seen:
                continue
            seen.add(real)
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, ast.ClassDef):
                    continue
                for item in node.body:
                    args = [a.arg for a in item.args.args] if isinstance(item, ast.FunctionDef) else []
                    if getattr(item, "name", None) == "update" and args == ["self", "values", "meta"]:
                        found.append((str(real.relative_to(ROOT.resolve())), node))
    return found


def test_every_reducer_can_merge():
    """A reducer merges through its own `merge` or by naming its sums (`Additive`)."""
    classes = _reducer_classes()
    assert len(classes) >= 8, [c.name for _, c in classes]
    lacking = [
        f"{path}:{node.name}"
        for path, node in classes
        if not any(isinstance(i, ast.FunctionDef) and i.name == "merge" for i in node.body)
        and not any(getattr(b, "id", None) == "Additive" for b in node.bases)
    ]
    assert not lacking, f"reducers without merge (add merge, or derive Additive naming additive): {lacking}"


def test_ranges_are_whole_batches_and_whole_shards():
    assert window_ranges(10, 4, 2) == [(0, 4), (4, 10)]
    assert window_ranges(3, 4, 5) == [(0, 3)]
    assert window_ranges(16, 2, 3) == [(0, 4), (4, 10), (10, 16)]
    assert plan_ranges(1000, 128, 3) == [(0, 256), (256, 640), (640, 1000)]
    assert plan_ranges(100, 128, 4) == [(0, 100)]
