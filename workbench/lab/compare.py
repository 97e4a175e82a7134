"""Comparing runs: the same chart of several runs drawn as one, each run in its own colour.

Works on Vega-Lite specs (a result's Altair charts as dictionaries), for any kind: the chart of the first
run is the template, each of its data sources is replaced by the rows of that source in every run with a
`run` column added, and each view is restyled so that colour tells the runs apart. A colour the chart
already used for something else (the domain, the layer, ...) moves to the line's dash, the point's shape
or (where neither is free) to `detail`, which keeps the groups apart without a legend; bars get an offset
per run beside each other; heat maps get a row per run. Aggregating transforms are grouped by run too.
A chart this cannot restyle (a facet or repeat operator, a stacked bar, a lookup) is drawn once per run,
one above the other, instead.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

VIEW_LISTS = ("layer", "hconcat", "vconcat", "concat")
GROUPED_TRANSFORMS = ("aggregate", "window", "joinaggregate", "stack", "density", "regression", "loess",
                      "pivot", "impute", "quantile")  # fmt: skip
ROW_TRANSFORMS = ("filter", "calculate", "fold", "flatten", "bin", "timeUnit", "sample", "extent")
LINE_MARKS = ("line", "trail", "rule")
POINT_MARKS = ("point", "circle", "square", "tick")
CATEGORIES = ("nominal", "ordinal")


class Unsupported(ValueError):
    """The chart cannot be overlaid (it is drawn once per run instead)."""


def _views(spec: dict) -> Iterator[dict]:
    """Every view of a spec, containers first, in document order."""
    yield spec
    for key in VIEW_LISTS:
        for child in spec.get(key, []):
            yield from _views(child)
    if isinstance(spec.get("spec"), dict):
        yield from _views(spec["spec"])


def _data_rows(spec: dict, view: dict) -> list[dict] | None:
    """The rows of a view's own data source (None when it has none and inherits its parent's)."""
    data = view.get("data")
    if data is None:
        return None
    if isinstance(data, dict) and isinstance(data.get("values"), list):
        rows = data["values"]
    elif isinstance(data, dict) and data.get("name") in spec.get("datasets", {}):
        rows = spec["datasets"][data["name"]]
    else:
        raise Unsupported("a data source that is not inline rows (a URL or a generator)")
    if not all(isinstance(row, dict) for row in rows):
        raise Unsupported("data rows that are not records")
    return rows


def run_field(specs: list[dict]) -> str:
    """A column name for the run that no data source of the charts uses already."""
    used = {
        key
        for spec in specs
        for view in _views(spec)
        for rows in [_data_rows(spec, view) or []]
        for row in rows
        for key in row
    }
    name = "run"
    while name in used:
        name = "_" + name
    return name


def _skeleton(value: Any) -> Any:
    """A spec without its data and titles: what must be equal for the runs' charts to be built alike."""
    if isinstance(value, dict):
        return {k: _skeleton(v) for k, v in value.items() if k not in ("datasets", "data", "title")}
    if isinstance(value, list):
        return [_skeleton(v) for v in value]
    return value


def _merge_data(template: dict, specs: list[dict], labels: list[str], field: str) -> None:
    """Give each data source of `template` the rows of that source in every spec, tagged with the run."""
    views = [list(_views(spec)) for spec in specs]
    skeleton = _skeleton(specs[0])
    if any(_skeleton(spec) != skeleton for spec in specs[1:]):
        raise Unsupported("the runs' charts are not built alike")
    datasets: dict[str, list[dict]] = {}
    for index, view in enumerate(_views(template)):
        if view.get("data") is None:
            continue
        rows = []
        for spec, spec_views, label in zip(specs, views, labels, strict=True):
            own = _data_rows(spec, spec_views[index])
            if own is None:
                raise Unsupported("the runs' charts are not built alike")
            rows += [{**row, field: label} for row in own]
        name = f"runs-{index}"
        datasets[name] = rows
        view["data"] = {"name": name}
    template["datasets"] = datasets


def _group_transforms(view: dict, field: str) -> None:
    for transform in view.get("transform", []):
        kind = next((key for key in transform if key in GROUPED_TRANSFORMS + ROW_TRANSFORMS), None)
        if kind is None:
            raise Unsupported(f"a transform the overlay cannot group by run: {sorted(transform)}")
        if kind in GROUPED_TRANSFORMS:
            key = "groupby"
            transform[key] = [*transform.get(key, []), field]


def _restyle(view: dict, field: str, in_layer: bool) -> None:
    """Colour a unit view by run, moving what colour meant before to dash, shape or detail."""
    mark = view["mark"] if isinstance(view["mark"], str) else view["mark"].get("type")
    encoding = view.setdefault("encoding", {})
    run = {"field": field, "type": "nominal", "title": "run"}
    color = encoding.get("color")
    if mark == "rect" or (isinstance(color, dict) and color.get("type") == "quantitative"):
        if in_layer or "row" in encoding or "facet" in encoding:
            raise Unsupported("a heat map inside a layer or facet")
        encoding["row"] = run  # a heat map per run, one colour scale for all
    else:
        if isinstance(color, dict) and color.get("field") not in (None, field):
            moved = {
                k: v
                for k, v in color.items()
                if k in ("field", "type", "title", "legend", "sort", "timeUnit")
            }
            axes = [
                encoding.get(axis, {}).get("field")
                for axis in ("x", "y")
                if isinstance(encoding.get(axis), dict)
            ]
            if mark in LINE_MARKS and "strokeDash" not in encoding:
                encoding["strokeDash"] = moved
            elif mark in POINT_MARKS and "shape" not in encoding:
                encoding["shape"] = moved
            elif mark == "bar" and color.get("field") in axes:
                pass  # the bar's own axis says it already
            elif mark == "bar":
                raise Unsupported("a bar chart coloured by a group of its own (stacked)")
            else:
                detail = encoding.get("detail", [])
                encoding["detail"] = [
                    *(detail if isinstance(detail, list) else [detail]),
                    {"field": moved["field"], "type": moved.get("type", "nominal")},
                ]
        encoding["color"] = run
        if mark == "bar":
            kinds = {
                axis: encoding.get(axis, {}).get("type")
                for axis in ("x", "y")
                if isinstance(encoding.get(axis), dict)
            }
            if kinds.get("x") in CATEGORIES:
                encoding["xOffset"] = {"field": field, "type": "nominal"}
            elif kinds.get("y") in CATEGORIES:
                encoding["yOffset"] = {"field": field, "type": "nominal"}
            else:
                raise Unsupported("a bar chart without a category axis to set the runs beside each other")
    tooltip = encoding.get("tooltip")
    if isinstance(tooltip, list):
        encoding["tooltip"] = [*tooltip, {"field": field, "type": "nominal"}]
    elif isinstance(tooltip, dict):
        encoding["tooltip"] = [tooltip, {"field": field, "type": "nominal"}]


def overlay(specs: list[dict], labels: list[str]) -> dict:
    """One spec drawing the chart of every run (`specs`, built alike) together, coloured by `labels`."""
    field = run_field(specs)
    template = copy.deepcopy(specs[0])
    if "facet" in template or "repeat" in template:
        raise Unsupported("a facet or repeat operator")
    _merge_data(template, specs, labels, field)

    def restyle(view: dict, in_layer: bool) -> None:
        _group_transforms(view, field)
        if "mark" in view:
            _restyle(view, field, in_layer)
        for key in VIEW_LISTS:
            for child in view.get(key, []):
                restyle(child, in_layer or key == "layer")

    restyle(template, False)
    return template


def side_by_side(specs: list[dict], labels: list[str]) -> dict:
    """The charts of the runs one above the other, each titled with its run (the fallback)."""
    datasets: dict[str, Any] = {}
    parts = []
    for spec, label in zip(specs, labels, strict=True):
        part = copy.deepcopy(spec)
        datasets.update(part.pop("datasets", {}))
        for key in ("$schema", "config"):
            part.pop(key, None)
        title = part.get("title")
        text = title.get("text") if isinstance(title, dict) else title
        part["title"] = f"{label}: {text}" if text else label
        parts.append(part)
    top = {key: specs[0][key] for key in ("$schema", "config") if key in specs[0]}
    return {**top, "vconcat": parts, "datasets": datasets}


def compare_spec(specs: list[dict], labels: list[str]) -> dict:
    """The runs' chart overlaid (colour = run), or side by side where it cannot be."""
    try:
        return overlay(specs, labels)
    except Unsupported:
        return side_by_side(specs, labels)
