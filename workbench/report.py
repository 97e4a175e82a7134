"""The HTML report: reads a run folder and writes one self-contained report.html (no outside requests)."""

from __future__ import annotations

import json
from pathlib import Path

from workbench.charts import CHART_STYLE, chart_spec, csp_meta, embed_script, escape, inline_scripts
from workbench.corpus import TokenWindows
from workbench.models import ModelHandle
from workbench.results import Result
from workbench.runs import Run, RunFolder, read_run

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2rem; } .sub { color: #666; margin-top: 0; }
section { border-top: 1px solid #ddd; padding-top: 0.8rem; margin-top: 1.2rem; }
table { border-collapse: collapse; font-size: 0.9rem; margin: 0.5rem 0; }
td, th { border: 1px solid #ddd; padding: 0.2rem 0.6rem; text-align: left; }
.charts { display: flex; flex-wrap: wrap; gap: 1rem; } .chart { min-height: 120px; }
.definition { color: #555; font-size: 0.85rem; } details { font-size: 0.85rem; }
.note { border-left: 3px solid #c90; padding-left: 0.6rem; }
"""
PAGE_STYLE = STYLE + CHART_STYLE  # the page's one stylesheet: the report's and the charts'


def _section(index: int, result, specs: dict[str, dict]) -> str:
    charts = []
    for name, chart in result.charts().items():
        div_id = f"chart-{index}-{name}"
        specs[div_id] = chart_spec(chart)
        charts.append(f'<div class="chart" id="{escape(div_id)}" data-chart="{escape(name)}"></div>')
    table = result.table().to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0, justify="left")
    # pandas puts style="text-align: ..." on the header row; the policy applies no style attribute (cells
    # are escaped, so only pandas' own tag can match)
    table = table.replace('<tr style="text-align: left;">', "<tr>")
    note = getattr(result, "note", "")  # a result's own word on an odd-looking outcome (e.g. s* = 0)
    note_html = f'<p class="note">{escape(note)}</p>' if note else ""
    return (
        f'<section id="{escape(result.kind)}"><h2>{escape(result.title)}</h2>'
        f'<p class="definition">{escape(result.provenance.definition)}</p>{note_html}{table}'
        f'<div class="charts">{"".join(charts)}</div></section>'
    )


def render_html(run: Run) -> str:
    specs: dict[str, dict] = {}
    sections = "".join(_section(i, r, specs) for i, r in enumerate(run.results))
    m = run.manifest
    model = (m.get("model") or {}).get("name", "?")
    provenance = escape(
        json.dumps(
            {k: m.get(k) for k in ("command", "created", "finished", "model", "data", "seed", "packages")},
            indent=2,
        )
    )
    # The policy runs the report's own two scripts and applies its own stylesheet, and nothing else.
    policy = csp_meta(inline_scripts(), [PAGE_STYLE])
    return (
        f'<!doctype html><html><head><meta charset="utf-8">{policy}'
        f"<title>Workbench report: {escape(model)}</title>"
        f"<style>{PAGE_STYLE}</style></head><body>"
        f"<h1>Workbench report: {escape(model)}</h1>"
        f'<p class="sub">run folder {escape(run.path.resolve())} · {escape(m.get("finished"))}</p>'
        f"{sections}<section><h2>Provenance</h2><details><summary>manifest.json</summary>"
        f"<pre>{provenance}</pre></details></section>{embed_script(specs)}</body></html>"
    )


def write_report(run_dir: str | Path) -> Path:
    """Render `run_dir`/report.html from the run folder's results.json (nothing is recomputed)."""
    run = read_run(run_dir)
    path = Path(run_dir) / "report.html"
    tmp = path.with_name(".report.html.tmp")
    tmp.write_text(render_html(run), encoding="utf-8")
    tmp.replace(path)
    return path


def foundation_results(
    handle: ModelHandle, windows: TokenWindows, batch_size: int = 8, seed: int = 0
) -> list[Result]:
    """The report's sections: model facts, data facts and the evaluation (last, the main one)."""
    from workbench.evaluate import evaluate
    from workbench.facts import CorpusFactsResult, ModelFactsResult

    evaluation = evaluate(handle, windows, batch_size=batch_size, seed=seed)
    return [ModelFactsResult.of(handle), CorpusFactsResult.of(windows, handle), evaluation]


def routing_results(
    handle: ModelHandle, windows: TokenWindows, batch_size: int = 8, seed: int = 0
) -> list[Result]:
    """A mixture-of-experts model's report has a routing section (every label); a dense model's has none."""
    if not handle.facts.moe:
        return []
    from workbench.experts.defaults import LABELS
    from workbench.experts.specialization import ExpertsSettings, run_experts

    return [run_experts(handle, windows, ExpertsSettings(labels=LABELS, batch_size=batch_size, seed=seed))]


def make_report(
    handle: ModelHandle,
    windows: TokenWindows,
    run: RunFolder,
    batch_size: int = 8,
    seed: int = 0,
    extra: list[Result] | None = None,
) -> Path:
    """Compute the report's results into `run`, then render run/report.html from the folder.

    The sections: the foundation results, a mixture-of-experts model's routing (`routing_results`), then
    `extra` (e.g. the results of other run folders).
    """
    routing = routing_results(handle, windows, batch_size=batch_size, seed=seed)
    results = foundation_results(handle, windows, batch_size=batch_size, seed=seed)
    for result in results:
        result.provenance.command = run.command
    run.save(results + routing + list(extra or []), files=["report.html"], main=results[-1])
    return write_report(run.path)
