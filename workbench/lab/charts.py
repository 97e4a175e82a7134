"""Charts for the panel: each result's Altair charts drawn to SVG on the server (vl-convert), and the
charts of several same-kind runs drawn together (workbench.lab.compare).

Drawing a chart takes a while, so SVGs are kept by the content of their spec (a few hundred at most): a
run's charts are drawn once, and drawn again only when its results change.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable

from workbench.lab.compare import compare_spec
from workbench.lab.index import merged_headline

MAX_COMPARED = 12


class CompareError(ValueError):
    """Runs that cannot be compared (HTTP 400)."""


def spec_title(spec: dict, default: str) -> str:
    title = spec.get("title")
    if isinstance(title, dict):
        title = title.get("text")
    if isinstance(title, list):
        title = " ".join(map(str, title))
    return str(title) if title else default


def _draw(spec: dict) -> str:
    from workbench.charts import chart_svg

    return chart_svg(spec)


class ChartRenderer:
    """SVGs of Vega-Lite specs, the latest `size` kept by the spec's content."""

    def __init__(self, size: int = 256, draw: Callable[[dict], str] = _draw) -> None:
        self.size, self.draw = size, draw
        self._svgs: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()  # charts are drawn on several threads

    def svg(self, spec: dict) -> str:
        key = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()
        with self._lock:
            if key in self._svgs:
                self._svgs.move_to_end(key)
                return self._svgs[key]
        svg = self.draw(spec)
        with self._lock:
            self._svgs[key] = svg
            while len(self._svgs) > self.size:
                self._svgs.popitem(last=False)
        return svg

    def entry(self, kind: str, name: str, spec: dict) -> dict:
        """{kind, name, title, svg}; a chart that fails to draw has an empty svg and the error."""
        entry = {"kind": kind, "name": name, "title": spec_title(spec, name), "svg": ""}
        try:
            entry["svg"] = self.svg(spec)
        except Exception as err:  # one bad chart (e.g. a hand-edited results.json) must not hide the rest
            entry["error"] = f"the chart could not be drawn: {type(err).__name__}: {err}"
        return entry

    def run_charts(self, run) -> list[dict]:
        """Every chart of a complete run (workbench.runs.Run), result by result."""
        return [
            self.entry(result.kind, name, chart.to_dict())
            for result in run.results
            for name, chart in result.charts().items()
        ]

    def compare(self, runs: list[tuple[str, object, dict]]) -> dict:
        """The compare answer for (id, Run, row) of two or more complete runs sharing a result kind."""
        if len(runs) < 2:
            raise CompareError("give two or more runs to compare (?id=A&id=B)")
        if len(runs) > MAX_COMPARED:
            raise CompareError(f"at most {MAX_COMPARED} runs can be compared at once")
        by_kind = [{} for _ in runs]
        for found, (_, run, _) in zip(by_kind, runs, strict=True):
            for result in run.results:
                found.setdefault(result.kind, result)  # a kind's first result is the one compared
        kinds = [kind for kind in by_kind[0] if all(kind in found for found in by_kind)]
        if not kinds:
            described = "; ".join(
                f"{rid}: {', '.join(found) or 'no results'}"
                for (rid, _, _), found in zip(runs, by_kind, strict=True)
            )
            raise CompareError(
                f"these runs have no result kind in common, so they cannot be compared ({described})"
            )
        labels = [rid for rid, _, _ in runs]
        charts = []
        for kind in kinds:
            per_run = [found[kind].charts() for found in by_kind]
            for name in per_run[0]:
                if all(name in charts_of for charts_of in per_run):
                    spec = compare_spec([charts_of[name].to_dict() for charts_of in per_run], labels)
                    charts.append(self.entry(kind, name, spec))
        table = [
            {"run": rid, "model": row["model"], **merged_headline([found[kind] for kind in kinds])}
            for (rid, _, row), found in zip(runs, by_kind, strict=True)
        ]
        return {"kind": kinds[-1], "runs": [row for _, _, row in runs], "charts": charts, "table": table}
