"""Comparing runs: one chart with every run's rows and colour = run, or one chart per run where that
cannot be."""

from __future__ import annotations

import altair as alt
import pandas as pd
import pytest

from workbench.charts import chart_svg
from workbench.lab.charts import ChartRenderer, CompareError
from workbench.lab.compare import Unsupported, compare_spec, overlay, run_field, side_by_side

LABELS = ["run-a", "run-b"]


def rows(spec: dict) -> dict[str, list[dict]]:
    return spec["datasets"]


def line_chart(shift: float) -> dict:
    data = pd.DataFrame(
        {"layer": [0, 1, 0, 1], "density": [0.1 + shift, 0.2, 0.3, 0.4], "input": list("aabb")}
    )
    chart = alt.Chart(data).mark_line().encode(x="layer:Q", y="density:Q", color="input:N", tooltip=["layer"])
    return chart.properties(title="density").to_dict()


def bar_chart(shift: float) -> dict:
    data = pd.DataFrame({"domain": ["code", "prose"], "loss": [3.0 + shift, 4.0]})
    return alt.Chart(data).mark_bar().encode(x="domain:N", y="loss:Q", color="domain:N").to_dict()


def test_lines_are_coloured_by_run_and_their_old_colour_becomes_the_dash():
    spec = overlay([line_chart(0), line_chart(0.5)], LABELS)
    ((name, merged),) = rows(spec).items()
    assert spec["data"] == {"name": name}
    assert len(merged) == 8 and [r["run"] for r in merged] == ["run-a"] * 4 + ["run-b"] * 4
    assert merged[0]["density"] == 0.1 and merged[4]["density"] == 0.6
    encoding = spec["encoding"]
    assert encoding["color"]["field"] == "run"
    assert encoding["strokeDash"]["field"] == "input"
    assert {"field": "run", "type": "nominal"} in encoding["tooltip"]
    assert spec["title"] == "density"


def test_bars_of_each_run_stand_side_by_side():
    spec = overlay([bar_chart(0), bar_chart(1)], LABELS)
    encoding = spec["encoding"]
    assert encoding["color"]["field"] == "run" and encoding["xOffset"]["field"] == "run"
    assert "strokeDash" not in encoding and "detail" not in encoding  # the domain is on the x axis already


def test_a_heat_map_gets_a_row_per_run():
    data = pd.DataFrame({"layer": [0, 1], "expert": [0, 1], "load": [0.2, 0.3]})
    heat = alt.Chart(data).mark_rect().encode(x="expert:O", y="layer:O", color="load:Q").to_dict()
    spec = overlay([heat, heat], LABELS)
    assert spec["encoding"]["row"]["field"] == "run" and spec["encoding"]["color"]["field"] == "load"


def test_layers_each_get_their_own_runs_rows():
    def layered(value: float) -> dict:
        curve = alt.Chart(pd.DataFrame({"s": [0.1, 0.5], "loss": [value, value + 1]})).mark_line()
        rule = alt.Chart(pd.DataFrame({"s*": [value]})).mark_rule()
        return alt.layer(curve.encode(x="s:Q", y="loss:Q"), rule.encode(x="s*:Q")).to_dict()

    spec = overlay([layered(1.0), layered(2.0)], LABELS)
    curve_rows = rows(spec)[spec["layer"][0]["data"]["name"]]
    rule_rows = rows(spec)[spec["layer"][1]["data"]["name"]]
    assert [r["s*"] for r in rule_rows] == [1.0, 2.0] and [r["run"] for r in rule_rows] == LABELS
    assert len(curve_rows) == 4
    assert all(layer["encoding"]["color"]["field"] == "run" for layer in spec["layer"])


def test_aggregates_are_grouped_by_run():
    def mean_chart(value: float) -> dict:
        data = pd.DataFrame({"x": [1, 2], "y": [value, value]})
        return (
            alt.Chart(data)
            .transform_aggregate(m="mean(y)", groupby=["x"])
            .mark_point()
            .encode(x="x:Q", y="m:Q")
            .to_dict()
        )

    spec = overlay([mean_chart(1), mean_chart(2)], LABELS)
    assert spec["transform"][0]["groupby"] == ["x", "run"]


def test_a_run_column_never_overwrites_a_data_column():
    data = pd.DataFrame({"run": [1, 2], "y": [3, 4]})
    chart = alt.Chart(data).mark_point().encode(x="run:Q", y="y:Q").to_dict()
    assert run_field([chart, chart]) == "_run"
    merged = next(iter(rows(overlay([chart, chart], LABELS)).values()))
    assert [r["run"] for r in merged] == [1, 2, 1, 2] and [r["_run"] for r in merged] == ["run-a"] * 2 + [
        "run-b"
    ] * 2


@pytest.mark.parametrize(
    "chart",
    [
        alt.Chart(pd.DataFrame({"a": ["x", "y"], "b": [1, 2], "c": ["p", "q"]}))
        .mark_bar()
        .encode(x="a:N", y="b:Q", color="c:N"),  # stacked bars
        alt.Chart(pd.DataFrame({"a": [1, 2], "b": [1, 2], "f": ["p", "q"]}))
        .mark_point()
        .encode(x="a:Q", y="b:Q")
        .facet("f:N"),  # a facet operator
        alt.Chart(pd.DataFrame({"a": [1.0, 2.0], "b": [1, 2]})).mark_bar().encode(x="a:Q", y="b:Q"),
    ],
)
def test_charts_that_cannot_be_overlaid_are_drawn_once_per_run(chart):
    spec = chart.to_dict()
    with pytest.raises(Unsupported):
        overlay([spec, spec], LABELS)
    fallback = compare_spec([spec, spec], LABELS)
    assert fallback == side_by_side([spec, spec], LABELS)
    assert len(fallback["vconcat"]) == 2 and fallback["vconcat"][1]["title"].startswith("run-b")
    assert "datasets" not in fallback["vconcat"][0]


def test_charts_built_differently_are_drawn_once_per_run():
    assert "vconcat" in compare_spec([line_chart(0), bar_chart(0)], LABELS)


@pytest.mark.parametrize("make", [line_chart, bar_chart])
def test_compared_specs_draw(make):
    svg = chart_svg(compare_spec([make(0), make(1)], LABELS))
    assert svg.startswith("<svg") and "run-a" in svg and "run-b" in svg


def test_each_spec_is_drawn_once_and_only_the_latest_are_kept():
    drawn = []
    renderer = ChartRenderer(size=2, draw=lambda spec: drawn.append(spec) or f"<svg>{spec['n']}</svg>")
    assert [renderer.svg({"n": n}) for n in (1, 1, 2, 1)] == [
        "<svg>1</svg>",
        "<svg>1</svg>",
        "<svg>2</svg>",
        "<svg>1</svg>",
    ]
    assert drawn == [{"n": 1}, {"n": 2}]
    renderer.svg({"n": 3})  # 2 is now the oldest: it goes
    renderer.svg({"n": 2})
    assert drawn == [{"n": 1}, {"n": 2}, {"n": 3}, {"n": 2}]


def test_a_chart_that_fails_to_draw_says_why_and_the_others_still_draw():
    def draw(spec):
        if spec.get("bad"):
            raise ValueError("no such mark")
        return "<svg/>"

    renderer = ChartRenderer(draw=draw)
    assert renderer.entry("k", "good", {"title": {"text": "Good"}}) == {
        "kind": "k",
        "name": "good",
        "title": "Good",
        "svg": "<svg/>",
    }
    bad = renderer.entry("k", "bad", {"bad": True})
    assert bad["svg"] == "" and "no such mark" in bad["error"] and bad["title"] == "bad"


def test_runs_without_a_kind_in_common_are_not_compared():
    renderer = ChartRenderer(draw=lambda spec: "<svg/>")

    class Run:
        def __init__(self, *kinds):
            self.results = [
                type("R", (), {"kind": kind, "charts": dict, "headline": dict})() for kind in kinds
            ]

    with pytest.raises(CompareError, match="no result kind in common"):
        renderer.compare([("a", Run("x"), {}), ("b", Run("y"), {})])
    with pytest.raises(CompareError, match="two or more"):
        renderer.compare([("a", Run("x"), {})])
    compared = renderer.compare([("a", Run("f", "x"), {"model": "m"}), ("b", Run("x", "g"), {"model": "n"})])
    assert compared["kind"] == "x" and compared["table"] == [
        {"run": "a", "model": "m"},
        {"run": "b", "model": "n"},
    ]
