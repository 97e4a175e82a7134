"""A run's report for the panel's sandboxed frame: tables and static SVG charts, no script at all.

The report.html a `workbench report` writes draws its charts with Vega in the browser; the panel shows
reports in a frame that runs no script (CONTENT_SECURITY_POLICY, `sandbox`), so the server draws the
charts itself and the page is plain HTML and SVG. Every text from the run is escaped.
"""

from __future__ import annotations

import html
import json


def escape(text: object) -> str:
    return html.escape(str(text))


# Sent as the page's header: nothing loads, nothing runs, only same-origin frames may show it.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; sandbox; frame-ancestors 'self'"
)
STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2rem; } .sub { color: #666; margin-top: 0; }
section { border-top: 1px solid #ddd; padding-top: 0.8rem; margin-top: 1.2rem; }
table { border-collapse: collapse; font-size: 0.9rem; margin: 0.5rem 0; }
td, th { border: 1px solid #ddd; padding: 0.2rem 0.6rem; text-align: left; }
.charts { display: flex; flex-wrap: wrap; gap: 1rem; } .definition { color: #555; font-size: 0.85rem; }
.note { border-left: 3px solid #c90; padding-left: 0.6rem; } .error { color: #a00; }
"""


def _section(result, charts: list[dict]) -> str:
    table = result.table().to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0, justify="left")
    note = getattr(result, "note", "")
    drawn = "".join(
        f"<figure>{c['svg']}</figure>" if c["svg"] else f'<p class="error">{escape(c.get("error", ""))}</p>'
        for c in charts
    )
    return (
        f"<section><h2>{escape(result.title)}</h2>"
        f'<p class="definition">{escape(result.provenance.definition)}</p>'
        + (f'<p class="note">{escape(note)}</p>' if note else "")
        + f'{table}<div class="charts">{drawn}</div></section>'
    )


def report_page(run, run_id: str, renderer) -> str:
    """The HTML page of a complete run (workbench.runs.Run), its charts drawn by `renderer`."""
    m = run.manifest
    model = (m.get("model") or {}).get("name", "?") if isinstance(m.get("model"), dict) else "?"
    sections = "".join(
        _section(
            result,
            [renderer.entry(result.kind, name, chart.to_dict()) for name, chart in result.charts().items()],
        )
        for result in run.results
    )
    provenance = {
        k: m.get(k) for k in ("command", "created", "finished", "model", "data", "seed", "packages")
    }
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{escape(run_id)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{escape(model)}</h1>"
        f'<p class="sub">run {escape(run_id)} · {escape(m.get("command") or "")} · '
        f"{escape(m.get('finished') or '')}</p>{sections}"
        f"<section><h2>Provenance</h2><details><summary>manifest.json</summary>"
        f"<pre>{escape(json.dumps(provenance, indent=2))}</pre></details></section></body></html>"
    )
