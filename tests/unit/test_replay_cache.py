"""Replay's caches: one bounded least-recently-used map per kind (plans, plans with pruned weights, pruning
orders, transcoders), under typed keys; sessions sharing an engine share what depends on the model only."""

from __future__ import annotations

import pytest
import torch

from workbench.models import load_model
from workbench.replay import ReplaySession, SublayerSkip, WeightPrune
from workbench.replay.caches import (
    LRU,
    PRUNED_PLAN_CACHE,
    PRUNING_ORDERS,
    PlanKey,
    PruningOrderKey,
    ReplayCache,
)


def test_an_lru_holds_its_capacity_and_forgets_the_least_recently_used():
    lru: LRU[str, int] = LRU(3)
    for i, key in enumerate("abc"):
        assert lru.put(key, i) == i
    assert lru.get("a") == 0  # a use: "b" is now the oldest
    lru.put("d", 3)
    assert list(lru) == ["c", "a", "d"] and "b" not in lru and lru.get("b") is None
    lru.put("c", 9)  # replacing a value is a use too
    lru.put("e", 4)
    assert list(lru) == ["d", "c", "e"] and lru.get("c") == 9 and len(lru) == 3
    with pytest.raises(ValueError):
        LRU(0)


def test_keys_are_typed_and_plans_with_pruned_weights_have_their_own_lru():
    skip = [SublayerSkip(1, "mlp")]
    pruned = [SublayerSkip(1, "mlp"), WeightPrune(0.5, "layerwise")]
    assert PlanKey.of(skip) == PlanKey.of([SublayerSkip(1, "mlp")]) and not PlanKey.of(skip).prunes_weights
    assert PlanKey.of(pruned).prunes_weights
    cache = ReplayCache()
    assert cache.plans_for(PlanKey.of(skip)) is cache.plans
    assert cache.plans_for(PlanKey.of(pruned)) is cache.pruned_plans
    # The level is not part of a pruning order's key: a sparsity slider ranks the scores once.
    assert PruningOrderKey.of(WeightPrune(0.2, "2:4", seed=1)) == PruningOrderKey.of(
        WeightPrune(0.7, "2:4", seed=1)
    )
    assert PruningOrderKey.of(WeightPrune(0.2, "2:4")) != PruningOrderKey.of(WeightPrune(0.2, "2:4", seed=1))
    shared = cache.sharing_loaded()
    assert shared.pruning_orders is cache.pruning_orders and shared.transcoders is cache.transcoders
    assert shared.plans is not cache.plans and shared.pruned_plans is not cache.pruned_plans


@pytest.fixture(scope="module")
def gpt2(checkpoints):
    return load_model(str(checkpoints["gpt2"]), device="cpu", progress=False)


def test_a_session_bounds_its_plans_and_pruning_orders(gpt2, monkeypatch):
    import workbench.replay.pruned as pruned

    ranked = []
    real_scores = pruned.scores
    monkeypatch.setattr(pruned, "scores", lambda *a, **k: ranked.append(1) or real_scores(*a, **k))
    tokens = torch.randint(0, gpt2.facts.d_vocab, (1, 8), generator=torch.Generator().manual_seed(0))
    session = ReplaySession(gpt2, tokens)
    cache = session.engine.cache

    levels = [0.1, 0.2, 0.3, 0.4]
    plans = [session.plan([WeightPrune(s, "layerwise")])[1] for s in levels]
    assert len(ranked) == 1  # one pruning order, reused for every level
    assert len(cache.pruned_plans) == PRUNED_PLAN_CACHE and len(cache.plans) == 0
    assert session.plan([WeightPrune(0.4, "layerwise")])[1] is plans[-1]  # still held
    assert session.plan([WeightPrune(0.1, "layerwise")])[1] is not plans[0]  # evicted, compiled anew

    for seed in range(PRUNING_ORDERS + 2):
        session.plan([WeightPrune(0.5, "layerwise", seed=seed, criterion="random")])
    assert len(cache.pruning_orders) == PRUNING_ORDERS
    assert PruningOrderKey.of(WeightPrune(0.5, "layerwise", seed=PRUNING_ORDERS + 1, criterion="random")) in (
        cache.pruning_orders
    )

    skip = [SublayerSkip(0, "attn")]
    first = session.plan(skip)[1]
    assert session.plan(skip)[1] is first and len(cache.plans) == 1

    # A session on the same model's tensors shares the pruning orders, not the plans.
    other = ReplaySession(gpt2, tokens, engine_of=session)
    assert other.engine.cache.pruning_orders is cache.pruning_orders and len(other.engine.cache.plans) == 0
    before = len(ranked)
    other.plan([WeightPrune(0.9, "layerwise", seed=PRUNING_ORDERS + 1, criterion="random")])
    assert len(ranked) == before
