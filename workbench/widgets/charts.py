"""The widgets' charts: Altair specs drawn to SVG in Python (vl-convert), so a chart is one small string
and nothing loads from a CDN."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import pandas as pd

from workbench.errors import WorkbenchError
from workbench.replay.edits import Edit, SublayerSkip, WeightPrune
from workbench.results import Result

CURVE_KINDS = ("essential_sparsity", "finercut")


def svg(chart: alt.TopLevelMixin) -> str:
    """The chart as inline SVG (about 15 KB for a line chart; 30 to 60 ms warm)."""
    import vl_convert

    return vl_convert.vegalite_to_svg(chart.to_dict())


def deviation(result) -> alt.Chart:
    """The replay's residual-deviation chart (the same as `ReplayResult.charts()`)."""
    return result.charts()["resid_deviation"]


def load_curve(source: str | Path | Result) -> Result:
    """An essential-sparsity or FinerCut result: given, or read from a run folder."""
    if isinstance(source, Result):
        result = source
    else:
        from workbench.runs import read_run

        run = read_run(source)
        result = next((r for r in run.results if r.kind in CURVE_KINDS), None)
        if result is None:
            kinds = ", ".join(r.kind for r in run.results)
            raise WorkbenchError(
                f"{source} holds no essential-sparsity or FinerCut result (it has: {kinds}); "
                "run `workbench essential --run-dir DIR` or `workbench finercut --run-dir DIR` first."
            )
    if result.kind not in CURVE_KINDS:
        raise WorkbenchError(f"a {result.kind} result has no curve; give an essential or finercut run")
    return result


def cursor_position(curve: Result, edits: list[Edit]) -> float:
    """Where the current edits sit on the curve: the pruning level, or the share of sublayers skipped."""
    if curve.kind == "essential_sparsity":
        return max((e.sparsity for e in edits if isinstance(e, WeightPrune)), default=0.0)
    skipped = sum(isinstance(e, SublayerSkip) for e in edits)
    return skipped / max(1, curve.n_sublayers)


def curve_with_cursor(curve: Result, edits: list[Edit]) -> alt.LayerChart:
    """The run's curve with a vertical rule at the current setting."""
    chart = next(iter(curve.charts().values()))
    rule = (
        alt.Chart(pd.DataFrame({"x": [cursor_position(curve, edits)]}))
        .mark_rule(color="#d62728", strokeWidth=2)
        .encode(x="x:Q")
    )
    return alt.layer(chart, rule)
