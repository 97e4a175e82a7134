"""The activation-sparsity result: density per layer, per input kind and per domain, with its charts."""

from __future__ import annotations

from dataclasses import dataclass, field

import altair as alt
import pandas as pd

from workbench.results import Provenance, Result, register_result
from workbench.sparsity.defaults import FIRING_BINS


@register_result
@dataclass(kw_only=True)
class SparsityResult(Result):
    kind = "sparsity"
    title = "Activation sparsity (lazy neurons)"

    model: str
    definition: str
    tokens: int
    density_mean: float
    layers: list[dict]
    by_input: dict[str, dict]
    provenance: Provenance
    by_domain: dict[str, list[float]] = field(default_factory=dict)  # domain -> per-layer mean density
    density_histograms: dict[str, list[int]] = field(default_factory=dict)  # layer -> tokens per k active
    firing_histograms: dict[str, list[int]] = field(default_factory=dict)  # layer -> neurons per freq bin
    thresholds: dict[str, float] = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.layers).assign(model=self.model, definition=self.definition)

    def charts(self) -> dict[str, alt.Chart]:
        by_layer = pd.DataFrame(
            [
                {"input": kind, "layer": layer, "density": d}
                for kind, body in self.by_input.items()
                for layer, d in enumerate(body["layers"])
            ]
        )
        charts = {
            "density_by_layer": alt.Chart(by_layer, width=300, height=180)
            .mark_line(point=True)
            .encode(
                x="layer:O",
                y=alt.Y("density:Q", title=f"mean density ({self.definition})"),
                color="input:N",
                tooltip=["input", "layer", "density"],
            )
            .properties(title=f"{self.model}: neuron density by layer"),
        }
        if self.density_histograms:
            rows = []
            for layer, hist in self.density_histograms.items():
                total, d_mlp = sum(hist), len(hist) - 1
                step = max(1, d_mlp // 50)  # at most ~50 points per layer
                for k in range(0, d_mlp + 1, step):
                    rows.append(
                        {"layer": layer, "density": k / d_mlp, "share": sum(hist[k : k + step]) / total}
                    )
            charts["density_distribution"] = (
                alt.Chart(pd.DataFrame(rows), width=300, height=180)
                .mark_line(interpolate="step-after")
                .encode(
                    x=alt.X("density:Q", title="per-token density"),
                    y=alt.Y("share:Q", title="share of tokens"),
                    color="layer:N",
                    tooltip=["layer", "density", "share"],
                )
                .properties(title="per-token density, by layer")
            )
        if self.firing_histograms:
            rows = [
                {"layer": layer, "firing frequency": i / FIRING_BINS, "neurons": n}
                for layer, hist in self.firing_histograms.items()
                for i, n in enumerate(hist)
            ]
            charts["firing_frequency"] = (
                alt.Chart(pd.DataFrame(rows), width=300, height=180)
                .mark_line(interpolate="step-after")
                .encode(
                    x=alt.X("firing frequency:Q", title="share of tokens a neuron fires on"),
                    y=alt.Y("neurons:Q"),
                    color="layer:N",
                    tooltip=["layer", "firing frequency", "neurons"],
                )
                .properties(title="neuron firing frequency")
            )
        return charts
