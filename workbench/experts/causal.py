"""Causal specialization: mask one expert at a time and measure the loss change per domain.

Definitions: docs/methods.md#causal-specialization-by-expert-masking.
"""

from __future__ import annotations

from dataclasses import dataclass

import altair as alt
import pandas as pd
from tqdm.auto import tqdm

from workbench.corpus import TokenWindows
from workbench.evaluate import evaluate
from workbench.experts.masking import ExpertMask, experts_masked
from workbench.models import ModelHandle
from workbench.probes.routing import moe_layers
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


def _losses(result) -> dict[str, float]:
    return {"all": result.loss} | {d: s.loss for d, s in result.by_domain.items()}


def masking_table(
    handle: ModelHandle,
    windows: TokenWindows,
    mode: str = "reroute",
    layers: list[int] | None = None,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> ExpertMaskingResult:
    """Loss change per (layer, expert, domain) with that one expert masked."""
    routed = moe_layers(handle) if layers is None else layers
    base = _losses(evaluate(handle, windows, batch_size=batch_size, progress=False))
    pairs = [(layer, e) for layer in routed for e in range(handle.facts.n_experts)]
    rows = []
    for layer, e in tqdm(pairs, desc=f"mask experts ({mode})", disable=not progress):
        with experts_masked(handle, [ExpertMask(layer, (e,), mode)]):
            losses = _losses(evaluate(handle, windows, batch_size=batch_size, progress=False))
        rows += [
            {"layer": layer, "expert": e, "domain": d, "loss": v, "delta": v - base[d]}
            for d, v in losses.items()
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
        base_loss=base,
        rows=rows,
        provenance=provenance,
    )
