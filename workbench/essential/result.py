"""The essential-sparsity result: the pruning curve, s*, the knee, and a note on why they came out so."""

from __future__ import annotations

from dataclasses import dataclass, field

import altair as alt
import pandas as pd

from workbench.results import Provenance, Result, register_result


def knee(curve: list[dict]) -> float | None:
    """The sparsity with the largest second difference of loss over the (sorted) levels."""
    points = sorted((p["sparsity"], p["loss"]) for p in curve)
    if len(points) < 3:
        return None
    second = [points[i - 1][1] - 2 * points[i][1] + points[i + 1][1] for i in range(1, len(points) - 1)]
    return points[1 + max(range(len(second)), key=second.__getitem__)][0]


def explain(
    curve: list[dict], tolerance: float, s_star: float, pattern: str, fixed_sparsity: float | None = None
) -> str:
    """Why s* and the knee came out as they did, in words, where the numbers alone would puzzle.

    Said: an N:M pattern's single level; s* = 0 (the first level above 0 already exceeds the tolerance);
    s* at the largest level tried (the sweep did not reach the drop); a null knee (fewer than 3 levels).
    Empty otherwise: s* then lies between a level within the tolerance and a larger one beyond it.
    """
    points = sorted(curve, key=lambda p: p["sparsity"])
    dense = points[0]["loss"]
    tried = [p for p in points if p["sparsity"] > 0]

    def rise(p: dict) -> str:
        return f"loss {p['loss']:.4f} ({p['loss'] / dense - 1:+.2%} over the dense {dense:.4f})"

    notes = []
    if fixed_sparsity is not None:
        notes.append(
            f"The {pattern} pattern has only one sparsity level, 1 - N/M = {fixed_sparsity:g}: the sweep "
            "evaluates the dense model and that level, with no grid and no bisection."
        )
    if not tried:
        notes.append("No sparsity above 0 was evaluated, so s* = 0.")
    elif s_star == 0.0:
        first = tried[0]
        which = "that level" if fixed_sparsity is not None else "the smallest level tried"
        notes.append(
            f"At {which}, {first['sparsity']:g}, the {rise(first)} exceeds the tolerance of "
            f"{tolerance:.2%}, and no level tried above 0 keeps the loss within it, so s* = 0."
        )
    elif s_star == tried[-1]["sparsity"]:
        last = tried[-1]
        tail = (
            "the pattern's only level"
            if fixed_sparsity is not None
            else "a lower bound: none larger was tried"
        )
        notes.append(
            f"The largest level tried, {s_star:g}, keeps the {rise(last)} within the tolerance of "
            f"{tolerance:.2%}, so s* = {s_star:g}, {tail}."
        )
    if len(points) < 3:
        notes.append(f"The knee needs at least 3 levels and the sweep has {len(points)}, so it is null.")
    return " ".join(notes)


@register_result
@dataclass(kw_only=True)
class EssentialResult(Result):
    kind = "essential_sparsity"
    title = "Essential sparsity (one-shot pruning)"

    model: str
    pattern: str
    criterion: str
    tolerance: float
    essential_sparsity: float
    knee: float | None
    curve: list[dict]
    provenance: Provenance
    timing: dict = field(default_factory=dict)
    note: str = ""  # why s* and the knee are what they are, when the numbers alone would puzzle (`explain`)

    def table(self) -> pd.DataFrame:
        rows = [{k: p[k] for k in ("sparsity", "loss", "perplexity", "accuracy")} for p in self.curve]
        return pd.DataFrame(rows).assign(pattern=self.pattern, criterion=self.criterion)

    def charts(self) -> dict[str, alt.Chart]:
        data = self.table()
        line = (
            alt.Chart(data, width=340, height=200)
            .mark_line(point=True)
            .encode(
                x=alt.X("sparsity:Q"),
                y=alt.Y("loss:Q", title="held-out loss (nats/token)"),
                tooltip=["sparsity", "loss", "perplexity", "accuracy"],
            )
        )
        rule = (
            alt.Chart(pd.DataFrame([{"s*": self.essential_sparsity}]))
            .mark_rule(strokeDash=[4, 3])
            .encode(x="s*:Q")
        )
        title = f"{self.model}: {self.pattern} {self.criterion} pruning, s* = {self.essential_sparsity:.3f}"
        return {"pruning_curve": (line + rule).properties(title=title)}
