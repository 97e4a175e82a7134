"""The sparsity explorer's views of a `SparsityResult`: its summary line, density by layer, and how
often each neuron of a layer fires (Altair charts, drawn offline as SVG by the widget)."""

from __future__ import annotations

import altair as alt
import pandas as pd

from workbench.sparsity.defaults import FIRING_BINS
from workbench.sparsity.result import SparsityResult


def summary_html(result: SparsityResult) -> str:
    thresholds = ""
    if result.thresholds:
        values = ", ".join(f"L{k} {v:.4g}" for k, v in result.thresholds.items())
        thresholds = f"<br>thresholds: {values}"
    return (
        f"<b>{result.definition}</b> on {result.tokens} tokens: mean density "
        f"<b>{result.density_mean:.2%}</b> (sparsity {1 - result.density_mean:.2%}) · "
        f"<span style='color:#555'>{result.provenance.definition}</span>{thresholds}"
    )


def by_layer_chart(result: SparsityResult) -> alt.Chart:
    """Mean density per layer over all tokens, and per domain when the tokens come from several."""
    rows = [
        {"layer": i, "density": d, "tokens": "all"}
        for i, d in enumerate(result.by_input["heldout"]["layers"])
    ]
    if len(result.by_domain) > 1:
        rows += [
            {"layer": i, "density": d, "tokens": domain}
            for domain, values in result.by_domain.items()
            for i, d in enumerate(values)
        ]
    return (
        alt.Chart(pd.DataFrame(rows), width=300, height=180)
        .mark_line(point=True)
        .encode(
            x="layer:O",
            y=alt.Y("density:Q", title=f"mean density ({result.definition})"),
            color=alt.Color("tokens:N", title="tokens"),
            tooltip=["tokens", "layer", "density"],
        )
        .properties(title=f"{result.model}: density by layer")
    )


def firing_chart(result: SparsityResult, layer: int) -> alt.Chart:
    """How many neurons of `layer` fire on each share of the tokens (FIRING_BINS bins)."""
    hist = result.firing_histograms[str(layer)]
    frame = pd.DataFrame(
        {
            "low": [i / FIRING_BINS for i in range(FIRING_BINS)],
            "high": [(i + 1) / FIRING_BINS for i in range(FIRING_BINS)],
            "neurons": hist,
        }
    )
    return (
        alt.Chart(frame, width=300, height=180)
        .mark_bar()
        .encode(
            x=alt.X("low:Q", title="share of tokens a neuron fires on", scale=alt.Scale(domain=[0, 1])),
            x2="high:Q",
            y2=alt.datum(0),  # bars from zero (x and x2 would make them horizontal)
            y=alt.Y("neurons:Q"),
            tooltip=["low", "high", "neurons"],
        )
        .properties(title=f"layer {layer}: neuron firing frequency")
    )
