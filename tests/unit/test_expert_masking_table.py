"""Oracle test for the expert-masking table: the replay-engine version against the hook-based one.

The reference below is the table's former computation: one full forward of the model (router hooks) per
(layer, expert), scored by `evaluate`. The replay version must give the same losses and deltas, overall
and per domain, in both masking modes.
"""

from __future__ import annotations

import math

import pytest

from workbench.corpus import load_corpus, make_windows
from workbench.evaluate import evaluate
from workbench.experts.causal import masking_table
from workbench.experts.masking import ExpertMask, experts_masked
from workbench.models import load_model
from workbench.probes.routing import moe_layers

REL = 1e-6


def _losses(result) -> dict[str, float]:
    return {"all": result.loss} | {d: s.loss for d, s in result.by_domain.items()}


def hooked_table(handle, windows, mode: str, batch_size: int) -> tuple[dict, list[dict]]:
    """(base loss, rows) the way the table was computed before replay: a full hooked forward per expert."""
    base = _losses(evaluate(handle, windows, batch_size=batch_size, progress=False))
    rows = []
    for layer in moe_layers(handle):
        for e in range(handle.facts.n_experts):
            with experts_masked(handle, [ExpertMask(layer, (e,), mode)]):
                losses = _losses(evaluate(handle, windows, batch_size=batch_size, progress=False))
            rows += [
                {"layer": layer, "expert": e, "domain": d, "loss": v, "delta": v - base[d]}
                for d, v in losses.items()
            ]
    return base, rows


def _windows(handle, n_windows: int, context: int):
    """A few windows from two documents of every domain, so that the per-domain grouping is exercised."""
    docs, seen = [], {}
    for doc in load_corpus():
        seen[doc.domain] = seen.get(doc.domain, 0) + 1
        if seen[doc.domain] <= 2:
            docs.append(doc)
    windows = make_windows(docs, handle.tokenizer, context, handle.separator_token_id)
    return windows.select(n_windows * context)


def assert_same_table(handle, windows, mode: str, batch_size: int) -> None:
    base, rows = hooked_table(handle, windows, mode, batch_size)
    result = masking_table(handle, windows, mode, batch_size=batch_size, progress=False)
    assert len({r["domain"] for r in rows}) > 2  # "all" and at least two domains: the grouping is tested
    assert result.base_loss.keys() == base.keys()
    for key, value in base.items():
        assert math.isclose(result.base_loss[key], value, rel_tol=REL), (key, result.base_loss[key], value)
    assert [(r["layer"], r["expert"], r["domain"]) for r in result.rows] == [
        (r["layer"], r["expert"], r["domain"]) for r in rows
    ]
    worst = 0.0
    for got, want in zip(result.rows, rows, strict=True):
        worst = max(worst, abs(got["loss"] - want["loss"]) / abs(want["loss"]))
        # delta: within 1e-6 of the loss it is the difference of (a cancellation cannot promise more)
        assert abs(got["delta"] - want["delta"]) <= REL * abs(want["loss"]), (got, want)
    assert worst <= REL, worst
    assert max(abs(r["delta"]) for r in rows) > 1e-4  # masking changed something


@pytest.mark.parametrize("kind", ["mixtral", "qwen2moe"])
@pytest.mark.parametrize("mode", ["reroute", "drop"])
def test_masking_table_matches_hooked_forwards_on_random_checkpoints(checkpoints, kind, mode):
    handle = load_model(str(checkpoints[kind]), device="cpu", progress=False)
    assert_same_table(handle, _windows(handle, n_windows=6, context=16), mode, batch_size=4)


@pytest.mark.parametrize("mode", ["reroute", "drop"])
def test_masking_table_matches_hooked_forwards_on_tiny_moe(mode):
    handle = load_model("tiny-moe", device="cpu", progress=False)
    assert_same_table(handle, _windows(handle, n_windows=4, context=16), mode, batch_size=3)
