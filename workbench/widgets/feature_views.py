"""The feature explorer's views: a feature's activation histogram (an Altair chart, drawn offline as SVG)
and the table comparing an edited run with the unedited model and with the plain splice."""

from __future__ import annotations

import altair as alt
import pandas as pd

from workbench.replay.session import ReplayResult
from workbench.transcoders.features import FeatureTable


def histogram_chart(table: FeatureTable, feature: int) -> alt.Chart | None:
    """The feature's nonzero activations on the context tokens, in the table's log-spaced bins."""
    counts = table.histograms.get(str(feature))
    if not counts or not any(counts):
        return None
    edges = table.histogram_edges
    frame = pd.DataFrame({"low": edges[:-1], "high": edges[1:], "tokens": counts})
    return (
        alt.Chart(frame, width=300, height=140)
        .mark_bar()
        .encode(
            x=alt.X("low:Q", scale=alt.Scale(type="log"), title="activation (nonzero)"),
            x2="high:Q",
            y2=alt.datum(0),  # bars from zero (x and x2 would make them horizontal)
            y=alt.Y("tokens:Q", title="tokens"),
            tooltip=["low", "high", "tokens"],
        )
        .properties(title=f"feature {feature}: activations on {table.tokens} context tokens")
    )


def comparison_html(result: ReplayResult, versus_splice: dict) -> str:
    """Two rows: the edited run against the unedited model, and against the plain splice."""
    rows = [
        (
            "vs unedited model",
            result.ce_base,
            result.ce_edited,
            result.ce_delta,
            result.kl,
            result.top1_agreement,
        ),
        (
            "vs plain splice",
            versus_splice["ce_reference"],
            versus_splice["ce_edited"],
            versus_splice["ce_delta"],
            versus_splice["kl"],
            versus_splice["top1_agreement"],
        ),
    ]
    head = "".join(
        f"<th style='padding:0 8px'>{k}</th>"
        for k in ("effect of the edit", "CE reference", "CE edited", "Δ CE", "KL", "top-1 agreement")
    )
    body = "".join(
        f"<tr><th style='padding:0 8px;text-align:left'>{name}</th>"
        f"<td class='wb-metric' style='padding:0 8px'>{ref:.4f}</td>"
        f"<td class='wb-metric' style='padding:0 8px'>{edited:.4f}</td>"
        f"<td class='wb-metric' style='padding:0 8px'>{delta:+.4f}</td>"
        f"<td class='wb-metric' style='padding:0 8px'>{kl:.4f}</td>"
        f"<td class='wb-metric' style='padding:0 8px'>{agree:.1%}</td></tr>"
        for name, ref, edited, delta, kl, agree in rows
    )
    return f"<table class='wb-metrics'><tr>{head}</tr>{body}</table>"
