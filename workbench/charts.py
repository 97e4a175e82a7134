"""Offline chart rendering: Vega and Vega-Lite are inlined (via vl-convert), never fetched from a CDN.

Everything here that goes into HTML is escaped for where it lands: chart specs carry strings from models,
file names, domains, tokens and hand-edited results.json files, so they are embedded as JSON that cannot
close its <script> element (script_json), and a report allows only its own inline code to run
(content_security_policy).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import json
from collections.abc import Iterable

import altair as alt

# JSON text that HTML cannot end early: "</script>", "<!--" and U+2028/9 become \u escapes (valid JSON).
_SCRIPT_ESCAPES = {
    ord("<"): "\\u003c",
    ord(">"): "\\u003e",
    ord("&"): "\\u0026",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}

SPECS_ID = "workbench-chart-specs"
# vega-embed options: "ast" makes Vega interpret expressions instead of compiling them with Function(),
# so the policy needs no 'unsafe-eval'; the default styles would be injected <style> elements, so they
# are off and CHART_STYLE (part of the page's own stylesheet) stands in for them.
EMBED_OPTIONS = {
    "renderer": "svg",
    "actions": False,
    "ast": True,
    "defaultStyle": False,
    "tooltip": {"disableDefaultStyle": True},
}
# The one script that draws the charts: fixed code (so its hash is fixed) that reads the specs from a
# JSON data block, which is never executed.
EMBED_CODE = f"""
const specs = JSON.parse(document.getElementById({json.dumps(SPECS_ID)}).textContent);
for (const [id, spec] of Object.entries(specs)) {{
  const element = document.getElementById(id);
  window.vegaEmbed(element, spec, {json.dumps(EMBED_OPTIONS)})
    .catch(e => {{ element.textContent = "chart failed: " + e; }});
}}
"""
# vega-embed's and vega-tooltip's default styles, trimmed to what the report's charts use.
CHART_STYLE = """
.vega-embed { position: relative; display: inline-block; box-sizing: border-box; }
#vg-tooltip-element { visibility: hidden; padding: 8px; position: fixed; z-index: 1000; font-size: 11px;
  font-family: sans-serif; border-radius: 3px; box-shadow: 2px 2px 4px rgba(0, 0, 0, 0.1);
  background-color: rgba(255, 255, 255, 0.95); border: 1px solid #d9d9d9; color: black; }
#vg-tooltip-element.visible { visibility: visible; }
#vg-tooltip-element h2 { margin-top: 0; margin-bottom: 10px; font-size: 13px; }
#vg-tooltip-element table { border-spacing: 0; }
#vg-tooltip-element td { overflow: hidden; text-overflow: ellipsis; padding: 2px 0; }
#vg-tooltip-element td.key { color: #808080; max-width: 150px; text-align: right; padding-right: 4px; }
#vg-tooltip-element td.value { display: block; max-width: 300px; max-height: 7em; text-align: left; }
"""


def script_json(value: object) -> str:
    """`value` as JSON that is safe inside an HTML <script> element (and still parses to the same value)."""
    return json.dumps(value).translate(_SCRIPT_ESCAPES)


@functools.cache
def vega_bundle() -> str:
    """Vega, Vega-Lite and vega-embed as one script that sets window.vegaEmbed (about 0.9 MB)."""
    import vl_convert

    # Library code, not data; it holds no "</script" today, and a later version's cannot end its element.
    return vl_convert.javascript_bundle().replace("</script", "<\\/script")


def inline_scripts() -> list[str]:
    """The text of every script that embed_script writes and a browser runs (for the policy's hashes)."""
    return [vega_bundle(), EMBED_CODE]


def embed_script(specs: dict[str, dict]) -> str:
    """Script tags that draw each Vega-Lite spec into the element with the given id, offline.

    The specs go into a JSON data block (escaped by script_json); the two scripts that run are fixed code,
    listed by inline_scripts() so that a Content-Security-Policy can allow exactly them."""
    bundle, code = inline_scripts()
    return (
        f'<script type="application/json" id="{SPECS_ID}">{script_json(specs)}</script>\n'
        f'<script type="module">{bundle}</script>\n<script type="module">{code}</script>'
    )


def _sha256_source(text: str) -> str:
    # A browser hashes an element's text after parsing, which turns CR LF and lone CR into LF.
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


def content_security_policy(scripts: Iterable[str], styles: Iterable[str]) -> str:
    """A policy that runs only the given inline scripts and applies only the given inline <style> texts.

    Nothing may be loaded from anywhere (default-src 'none'): no remote or local script, style, font,
    image, frame or connection; no <base> and no form submission. Scripts and styles are allowed by the
    sha256 of their exact text, so neither injected markup nor a style= attribute can run or apply. Vega
    draws SVG and is told to interpret its expressions (EMBED_OPTIONS "ast"), so no 'unsafe-eval'."""
    script_src = " ".join(_sha256_source(s) for s in scripts)
    style_src = " ".join(_sha256_source(s) for s in styles)
    return (
        f"default-src 'none'; script-src {script_src}; style-src {style_src}; "
        "base-uri 'none'; form-action 'none'"
    )


def csp_meta(scripts: Iterable[str], styles: Iterable[str]) -> str:
    """The <meta http-equiv> element of content_security_policy; it belongs first in <head>."""
    policy = escape(content_security_policy(scripts, styles))
    return f'<meta http-equiv="Content-Security-Policy" content="{policy}">'


def chart_spec(chart: alt.TopLevelMixin) -> dict:
    return chart.to_dict()


def _titles(spec: dict) -> list[str]:
    """The titles of a chart and of the charts it is made of, in order."""
    title = spec.get("title")
    if isinstance(title, dict):
        title = title.get("text")
    if isinstance(title, list):
        title = " ".join(map(str, title))
    found = [str(title)] if title else []
    for key in ("hconcat", "vconcat", "concat", "layer"):
        for part in spec.get(key, []):
            found += _titles(part)
    if isinstance(spec.get("spec"), dict):  # facet and repeat
        found += _titles(spec["spec"])
    return found


def chart_svg(spec: dict) -> str:
    """A static SVG of a Vega-Lite spec, drawn here by vl-convert (no browser, no network)."""
    import vl_convert

    vl_version = "v" + "_".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])  # the version Altair writes
    return vl_convert.vegalite_to_svg(spec, vl_version=vl_version)


def notebook_renderer(spec: dict, **metadata) -> tuple[dict, dict]:
    """Altair renderer: the live JupyterChart widget, offline, with a static SVG of it in the same output.

    JupyterLab draws the widget; where no widget can run (a saved notebook on GitHub or nbviewer, or
    JupyterLab without its kernel) the SVG shows instead, and text/plain names the chart rather than
    giving the widget's repr. Returns IPython's (data, metadata) pair."""
    alt.JupyterChart.enable_offline(offline=True)  # its JavaScript comes with the output, never from a CDN
    widget = alt.JupyterChart(chart=alt.Chart.from_dict(spec), embed_options=metadata.get("embed_options"))
    shown = widget._repr_mimebundle_()  # anywidget gives (data, metadata), ipywidgets a plain dict
    data, meta = shown if isinstance(shown, tuple) else (shown or {}, {})
    titles = _titles(spec)
    data = {
        **data,
        "image/svg+xml": chart_svg(spec),
        "text/plain": "Chart: " + " | ".join(titles) if titles else "Chart",
    }
    return data, dict(meta)


alt.renderers.register("workbench", notebook_renderer)


def enable_notebook_offline() -> None:
    """Make Altair charts render in JupyterLab with no network, and stay visible in a saved notebook.

    Each chart is Altair's JupyterChart widget with its JavaScript shipped through the notebook (no CDN),
    plus a static SVG in the same output (notebook_renderer; docs/architecture.md#offline-charts)."""
    alt.renderers.enable("workbench")


def escape(text: object) -> str:
    return html.escape(str(text))
