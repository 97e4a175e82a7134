"""Offline chart rendering: Vega and Vega-Lite are inlined (via vl-convert), never fetched from a CDN."""

from __future__ import annotations

import functools
import html
import json

import altair as alt


@functools.cache
def vega_bundle() -> str:
    """Vega, Vega-Lite and vega-embed as one script that sets window.vegaEmbed (about 0.9 MB)."""
    import vl_convert

    return vl_convert.javascript_bundle()


def embed_script(specs: dict[str, dict]) -> str:
    """Script tags that draw each Vega-Lite spec into the element with the given id, offline."""
    calls = "\n".join(
        f"window.vegaEmbed({json.dumps('#' + div_id)}, {json.dumps(spec)}, "
        '{"renderer": "svg", "actions": false}).catch(e => { document.getElementById('
        f"{json.dumps(div_id)}).textContent = 'chart failed: ' + e; }});"
        for div_id, spec in specs.items()
    )
    bundle = vega_bundle().replace("</script", "<\\/script")
    return f'<script type="module">{bundle}</script>\n<script type="module">\n{calls}\n</script>'


def chart_spec(chart: alt.TopLevelMixin) -> dict:
    return chart.to_dict()


def enable_notebook_offline() -> None:
    """Make Altair charts render in JupyterLab with no network (docs/architecture.md#offline-charts)."""
    alt.renderers.enable("jupyter", offline=True)


def escape(text: object) -> str:
    return html.escape(str(text))
