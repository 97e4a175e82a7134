"""What each transcoder feature does: density, activation histogram, top-activating contexts.

One pass over token windows folds, per feature: how often it fires, the sum and maximum of its
activation, a histogram of its nonzero activations (log-spaced bins), and its top-N activations with
where they happened (window, position). `contexts()` then re-runs only the windows needed to show
the tokens around each top activation with the feature's value on every one of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import altair as alt
import pandas as pd
import torch

from workbench.corpus import TokenWindows
from workbench.models import ModelHandle
from workbench.progress import Bar
from workbench.results import Provenance, Result, register_result
from workbench.transcoders.data import mlp_pairs_of
from workbench.transcoders.model import Transcoder

if TYPE_CHECKING:
    from workbench.scale.cluster import Workers

HIST_EDGES = torch.logspace(-3, 2, 26)  # nonzero activations from 0.001 to 100, 25 log bins (+ under/over)
DEFINITION = (
    "Transcoder features over held-out tokens: density = share of tokens with z_i > 0; mean activation over "
    "the tokens where it fires; histogram of nonzero z_i in log-spaced bins 1e-3..1e2 (first and last bins "
    "also hold the values beyond); top contexts = the N largest z_i with their (window, position)."
)


class FeatureReducer:
    """Per feature: firing count, activation sum, histogram, and the top-N activations with their global
    token index. Reducers of disjoint tokens merge (`merge`) into the reducer of all of them."""

    def __init__(self, width: int, top_n: int) -> None:
        self.fires = torch.zeros(width, dtype=torch.long)
        self.act_sum = torch.zeros(width, dtype=torch.float64)
        self.hist = torch.zeros(width, len(HIST_EDGES) - 1, dtype=torch.long)
        self.top_values = torch.full((width, top_n), -1.0)
        self.top_where = torch.full((width, top_n), -1, dtype=torch.long)  # global token index
        self.top_n = top_n

    def update(self, z: torch.Tensor, first_token: int) -> None:
        active = z > 0
        self.fires += active.sum(0)
        self.act_sum += z.sum(0).double()
        rows, cols = active.nonzero(as_tuple=True)
        bins = (torch.bucketize(z[rows, cols], HIST_EDGES) - 1).clamp(0, len(HIST_EDGES) - 2)
        self.hist.index_put_((cols, bins), torch.ones_like(bins), accumulate=True)
        n = min(self.top_n, len(z))
        values, where = z.T.topk(n, dim=1)  # [width, n]
        merged_v = torch.cat([self.top_values, values], dim=1)
        merged_w = torch.cat([self.top_where, where + first_token], dim=1)
        best = merged_v.topk(self.top_n, dim=1)
        self.top_values = best.values
        self.top_where = merged_w.gather(1, best.indices)

    def merge(self, other: FeatureReducer) -> None:
        """Add counts, sums and histograms; keep the top N of both top lists (this one's first on ties)."""
        if (other.fires.shape, other.top_n) != (self.fires.shape, self.top_n):
            raise ValueError("cannot merge feature statistics of another width or top_n")
        self.fires = self.fires + other.fires  # new tensors: these may be inference-mode tensors
        self.act_sum = self.act_sum + other.act_sum
        self.hist = self.hist + other.hist
        merged_v = torch.cat([self.top_values, other.top_values], dim=1)
        merged_w = torch.cat([self.top_where, other.top_where], dim=1)
        order = merged_v.sort(dim=1, descending=True, stable=True).indices[:, : self.top_n]
        self.top_values = merged_v.gather(1, order)
        self.top_where = merged_w.gather(1, order)


@torch.inference_mode()
def fold_features(
    handle: ModelHandle,
    windows: TokenWindows,
    tc: Transcoder,
    batch_size: int = 8,
    top_n: int = 10,
    progress: bool = False,
) -> FeatureReducer:
    """The feature statistics of `windows` (a `part` of larger windows counts its tokens from its offset)."""
    tc = tc.to(handle.device)
    reducer = FeatureReducer(tc.width, top_n)
    done = windows.offset * windows.context
    bar = Bar(windows.n_tokens, unit="tokens", desc="feature statistics", show=progress)
    for batch in windows.batches(batch_size):
        x, _ = mlp_pairs_of(handle, tc.cfg.layer, batch.tokens)
        reducer.update(tc.features(x).cpu(), done)  # the reducer's tensors live on the CPU
        done += batch.tokens.numel()
        bar.update(batch.tokens.numel())
    bar.close()
    return reducer


@register_result
@dataclass(kw_only=True)
class FeatureTable(Result):
    kind = "transcoder_features"
    title = "Transcoder features"

    model: str
    layer: int
    tokens: int
    context: int
    density: list[float]
    mean_activation: list[float]
    max_activation: list[float]
    provenance: Provenance
    top: list[list[list[float]]] = field(default_factory=list)  # per feature: [activation, window, position]
    histogram_edges: list[float] = field(default_factory=list)
    histograms: dict[str, list[int]] = field(default_factory=dict)  # the densest features' histograms

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "feature": range(len(self.density)),
                "density": self.density,
                "mean_activation": self.mean_activation,
                "max_activation": self.max_activation,
            }
        ).assign(model=self.model, layer=self.layer)

    def charts(self) -> dict[str, alt.Chart]:
        t = self.table()
        t = t[t.density > 0].assign(log10_density=lambda d: d.density.map(math.log10))
        rows = [
            {"feature": f, "bin": (self.histogram_edges[i] * self.histogram_edges[i + 1]) ** 0.5, "count": c}
            for f, hist in self.histograms.items()
            for i, c in enumerate(hist)
        ]
        return {
            "density_vs_activation": alt.Chart(t, width=300, height=200)
            .mark_circle(size=12, opacity=0.5)
            .encode(
                x=alt.X("log10_density:Q", title="log10 density"),
                y=alt.Y("mean_activation:Q", title="mean activation when firing"),
                tooltip=["feature", "density", "mean_activation", "max_activation"],
            )
            .properties(title=f"{self.model} layer {self.layer}: {len(t)} live features"),
            "activation_histograms": alt.Chart(pd.DataFrame(rows), width=300, height=200)
            .mark_line()
            .encode(
                x=alt.X("bin:Q", scale=alt.Scale(type="log"), title="activation"),
                y="count:Q",
                color="feature:N",
            )
            .properties(title="activation histograms of the densest features"),
        }


@torch.inference_mode()
def feature_table(
    handle: ModelHandle,
    tc: Transcoder,
    windows: TokenWindows,
    batch_size: int = 8,
    top_n: int = 10,
    histograms: int = 8,
    progress: bool = True,
    seed: int = 0,
    workers: Workers | None = None,
) -> FeatureTable:
    """Density, mean and top activations of every feature over `windows`; with `workers`, folded on Ray
    workers (one range each) and merged."""
    if workers is None:
        reducer = fold_features(handle, windows, tc, batch_size, top_n, progress)
    else:
        from workbench.probes.sinks import merge_all
        from workbench.scale.fold import fold_ranges
        from workbench.scale.recipe import ModelRecipe

        parts = fold_ranges(
            windows,
            fold_features,
            (tc, batch_size, top_n),
            workers=workers,
            recipe=ModelRecipe.of(handle),
            batch_size=batch_size,
            progress=progress,
            desc="feature statistics",
        )
        reducer = merge_all(parts)
    done = windows.n_tokens
    fires = reducer.fires.clamp_min(1).double()
    densest = reducer.fires.topk(min(histograms, tc.width)).indices.tolist()
    top = []
    for values, where in zip(reducer.top_values.tolist(), reducer.top_where.tolist(), strict=True):
        top.append(
            [
                [v, w // windows.context, w % windows.context]
                for v, w in zip(values, where, strict=True)
                if v > 0
            ]
        )
    return FeatureTable(
        model=handle.name,
        layer=tc.cfg.layer,
        tokens=done,
        context=windows.context,
        density=(reducer.fires.double() / max(1, done)).tolist(),
        mean_activation=(reducer.act_sum / fires).tolist(),
        max_activation=reducer.top_values[:, 0].clamp_min(0).tolist(),
        provenance=Provenance(
            model=handle.facts.to_dict(),
            data=windows.slice_info,
            definition=DEFINITION,
            settings={"transcoder": tc.cfg.to_dict(), "top_n": top_n},
            seed=seed,
        ),
        top=top,
        histogram_edges=HIST_EDGES.tolist(),
        histograms={str(f): reducer.hist[f].tolist() for f in densest},
    )


@torch.inference_mode()
def contexts(
    handle: ModelHandle,
    tc: Transcoder,
    windows: TokenWindows,
    table: FeatureTable,
    feature: int,
    n: int = 5,
    before: int = 10,
    after: int = 3,
) -> list[dict]:
    """The tokens around the feature's top activations, each with the feature's value there."""
    out = []
    for value, window, position in table.top[feature][:n]:
        tokens = windows.tokens[int(window)][None]
        x, _ = mlp_pairs_of(handle, tc.cfg.layer, tokens)
        acts = tc.features(x)[:, feature]
        lo, hi = max(0, int(position) - before), min(tokens.shape[1], int(position) + after + 1)
        out.append(
            {
                "activation": value,
                "window": int(window),
                "position": int(position),
                "tokens": [
                    {"text": handle.tokenizer.decode([int(t)]), "activation": float(a)}
                    for t, a in zip(tokens[0, lo:hi].tolist(), acts[lo:hi].tolist(), strict=True)
                ],
            }
        )
    return out


def render_contexts(items: list[dict]) -> str:
    """HTML: each context as a line of tokens shaded by the feature's activation."""
    peak = max((t["activation"] for item in items for t in item["tokens"]), default=1.0) or 1.0
    lines = []
    for item in items:
        spans = "".join(
            f'<span style="background: rgba(255,120,0,{max(0.0, t["activation"]) / peak:.2f})">'
            f"{_escape(t['text'])}</span>"
            for t in item["tokens"]
        )
        lines.append(
            f"<div style='font-family:monospace;white-space:pre'>{item['activation']:.2f} │ {spans}</div>"
        )
    return "\n".join(lines)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\n", "⏎")
