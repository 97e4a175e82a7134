"""Causal specialization: mask one expert at a time and measure the loss change per domain.

Definitions: docs/methods.md#causal-specialization-by-expert-masking.

Built on the replay engine (docs/architecture.md#performance-principles): each batch of windows is run
once unedited, with the residual stream cached at every layer boundary; each (layer, expert) mask is an
`expert_mask` edit replayed from its own layer, so masking an expert at layer L recomputes only layers
>= L. Batches of whole windows keep memory flat in the number of tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import altair as alt
import pandas as pd
import torch

from workbench.corpus import TokenWindows
from workbench.experts.masking import ExpertMask, check_masks
from workbench.models import ModelHandle
from workbench.probes.routing import moe_layers
from workbench.progress import Bar
from workbench.replay.caches import ReplayCache
from workbench.replay.effects import next_token_loss
from workbench.replay.engine import ReplayEngine
from workbench.replay.plan import compile_plan
from workbench.replay.stack import Stack
from workbench.results import Provenance, Result, register_result

DEFINITION = (
    "Causal specialization: held-out next-token cross-entropy (nats/token) with one expert "
    "of one layer masked, minus the unmasked loss, overall and per domain. Modes: reroute (the expert's "
    "router logit set to −inf before top-k; tokens take their next-best expert) or drop (the other k−1 "
    "choices kept, weights scaled back to the original sum). "
    "See docs/methods.md#causal-specialization-by-expert-masking."
)


@register_result
@dataclass(kw_only=True)
class ExpertMaskingResult(Result):
    kind = "expert_masking"
    title = "Expert masking: loss increase per (layer, expert, domain)"

    model: str
    mode: str
    tokens: int
    base_loss: dict[str, float]  # "all" and each domain
    rows: list[dict]  # {"layer", "expert", "domain", "loss", "delta"}
    provenance: Provenance

    def table(self) -> pd.DataFrame:
        wide = pd.DataFrame(self.rows).pivot_table(
            index=["layer", "expert"], columns="domain", values="delta"
        )
        return wide.reset_index().rename_axis(columns=None).assign(model=self.model, mode=self.mode)

    def charts(self) -> dict[str, alt.Chart]:
        return {
            "delta": alt.Chart(pd.DataFrame(self.rows), width=160, height=120)
            .mark_rect()
            .encode(
                x="expert:O",
                y="layer:O",
                color=alt.Color("delta:Q", title="Δ loss (nats)", scale=alt.Scale(scheme="orangered")),
                column="domain:N",
                tooltip=["layer", "expert", "domain", "loss", "delta"],
            )
            .properties(title=f"{self.model}: loss increase with one expert masked ({self.mode})")
        }


class _DomainLosses:
    """Per-domain sums of next-token losses (float64), counted under the predicted token's domain, as
    `workbench.evaluate` counts them."""

    def __init__(self, n_domains: int) -> None:
        self.sum = torch.zeros(n_domains, dtype=torch.float64)
        self.count = torch.zeros(n_domains, dtype=torch.long)

    def add(self, losses: torch.Tensor, domain: torch.Tensor, count: bool) -> None:
        """losses [B, T-1] of the batch; domain [B, T-1] of the predicted tokens."""
        self.sum.index_add_(0, domain, losses.cpu().double().flatten())
        if count:
            self.count.index_add_(0, domain, torch.ones_like(domain))

    def means(self, domains: list[str], count: torch.Tensor) -> dict[str, float]:
        """Mean loss over all predictions ("all"), then per domain present (a sample may miss one)."""
        total = int(count.sum())
        out = {"all": self.sum.sum().item() / total if total else float("nan")}
        return out | {d: self.sum[i].item() / int(count[i]) for i, d in enumerate(domains) if count[i] > 0}


def masking_table(
    handle: ModelHandle,
    windows: TokenWindows,
    mode: str = "reroute",
    layers: list[int] | None = None,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> ExpertMaskingResult:
    """Loss change per (layer, expert, domain) with that one expert masked.

    Each batch is run once unedited; every (layer, expert) mask is replayed from its layer on.
    """
    routed = moe_layers(handle) if layers is None else layers
    pairs = [(layer, e) for layer in routed for e in range(handle.facts.n_experts)]
    masks = [ExpertMask(layer, (e,), mode) for layer, e in pairs]
    check_masks(handle, masks)
    stack, cache = Stack.of(handle), ReplayCache()
    plans = [compile_plan(handle, stack, [mask], cache) for mask in masks]  # once, reused per batch
    n_domains = len(windows.domains)
    base = _DomainLosses(n_domains)
    masked = [_DomainLosses(n_domains) for _ in pairs]
    total = len(pairs) * windows.n_windows
    bar = Bar(total, unit="windows", desc=f"mask experts ({mode})", show=progress)
    for batch in windows.batches(batch_size):
        engine = ReplayEngine(handle, batch.tokens, stack, cache)
        domain = batch.domain[:, 1:].long().flatten()
        with torch.inference_mode():
            base.add(next_token_loss(engine.base_logprobs, engine.tokens), domain, count=True)
            for plan, losses in zip(plans, masked, strict=True):
                logprobs = torch.log_softmax(engine.replay(plan).trace.logits.float(), dim=-1)
                losses.add(next_token_loss(logprobs, engine.tokens), domain, count=False)
                bar.update(batch.tokens.shape[0])
        del engine  # its cached residuals: one batch's worth at a time
    bar.close()
    base_loss = base.means(windows.domains, base.count)
    rows = []
    for (layer, e), losses in zip(pairs, masked, strict=True):
        rows += [
            {"layer": layer, "expert": e, "domain": d, "loss": v, "delta": v - base_loss[d]}
            for d, v in losses.means(windows.domains, base.count).items()
        ]
    provenance = Provenance(
        model=handle.facts.to_dict(),
        data=windows.slice_info,
        definition=DEFINITION,
        settings={"mode": mode, "layers": routed, "batch_size": batch_size},
        seed=seed,
    )
    return ExpertMaskingResult(
        model=handle.name,
        mode=mode,
        tokens=windows.n_tokens,
        base_loss=base_loss,
        rows=rows,
        provenance=provenance,
    )
