"""Charts in HTML: embedded JSON cannot end its script, a report runs only its own code, and a notebook's
charts keep a static SVG in their saved output."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from html.parser import HTMLParser

import altair as alt
import pandas as pd
import pytest

from workbench.charts import SPECS_ID, embed_script, enable_notebook_offline, script_json

HOSTILE = "</script><img src=x onerror=alert(1)>\u2028\u2029<!--<script>&amp;</SCRIPT >"


class Elements(HTMLParser):
    """Every element a browser's parser would see, with its attributes and (for scripts) its text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[tuple[dict, str]] = []
        self._open_script: dict | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._open_script = dict(attrs)
            self.scripts.append((self._open_script, ""))

    def handle_data(self, data):
        if self._open_script is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)

    def handle_endtag(self, tag):
        if tag == "script":
            self._open_script = None


def parse(html: str) -> Elements:
    parser = Elements()
    parser.feed(html)
    parser.close()
    return parser


def test_script_json_cannot_end_a_script_and_round_trips():
    value = {"title": HOSTILE, HOSTILE: [HOSTILE, 1.5, None, {"x": "a > b && c < d"}]}
    text = script_json(value)
    for raw in ("<", ">", "&", "\u2028", "\u2029"):
        assert raw not in text
    assert json.loads(text) == value


def test_hostile_spec_stays_inside_its_data_block():
    specs = {"chart-0-x": {"title": HOSTILE, "data": {"values": [{"domain": HOSTILE}]}}}
    html = embed_script(specs)
    found = parse(html)
    assert [tag for tag, _ in found.tags] == ["script", "script", "script"]  # no injected element
    data = [text for attrs, text in found.scripts if attrs.get("id") == SPECS_ID]
    assert len(data) == 1 and json.loads(data[0]) == specs


def sha256_source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_report_policy_allows_exactly_its_own_inline_code(tmp_path):
    from workbench.report import render_html
    from workbench.runs import Run

    html = render_html(Run(tmp_path, {"model": {"name": HOSTILE}}, []))
    found = parse(html)
    metas = [a for t, a in found.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert len(metas) == 1
    first_script = next(i for i, (t, _) in enumerate(found.tags) if t == "script")
    assert found.tags.index(("meta", metas[0])) < first_script  # the policy is in force before any script
    policy = dict(
        (d.split()[0], d.split()[1:]) for d in (p.strip() for p in metas[0]["content"].split(";")) if d
    )
    assert policy["default-src"] == ["'none'"] and policy["base-uri"] == ["'none'"]
    runs = [text for attrs, text in found.scripts if attrs.get("type") == "module"]
    assert len(runs) == 2 and all(
        attrs.get("type") in ("module", "application/json") for attrs, _ in found.scripts
    )
    assert sorted(policy["script-src"]) == sorted(sha256_source(text) for text in runs)
    style = re.search(r"<style>(.*?)</style>", html, re.S).group(1)
    assert policy["style-src"] == [sha256_source(style)]
    assert "unsafe" not in metas[0]["content"] and "http" not in metas[0]["content"]
    assert not any("src" in attrs or "style" in attrs for tag, attrs in found.tags if tag != "meta")


def chart() -> alt.HConcatChart:
    frame = pd.DataFrame({"domain": ["prose", "code"], "loss": [3.5, 2.25]})
    base = alt.Chart(frame).mark_bar().encode(x="domain:N", y="loss:Q")
    return base.properties(title="loss by domain") | base.properties(title="second <chart>")


@pytest.fixture
def notebook_renderer():
    """enable_notebook_offline() for one test; Altair's renderer is put back afterwards."""
    active, options = alt.renderers.active, alt.renderers.options
    enable_notebook_offline()
    yield
    alt.renderers.enable(active, **options)


def test_notebook_chart_output_has_widget_and_static_svg(notebook_renderer):
    data, _ = chart()._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in data  # the live chart in JupyterLab
    svg = data["image/svg+xml"]
    assert svg.startswith("<svg") and "loss by domain" in svg and "second &lt;chart&gt;" in svg
    assert data["text/plain"] == "Chart: loss by domain | second <chart>"


def test_saved_notebook_keeps_its_charts_offline(tmp_path):
    """A notebook run by a kernel, then saved: the chart cell's output carries an SVG and no CDN."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    cells = [
        "import altair as alt\nimport pandas as pd\nfrom workbench.charts import enable_notebook_offline\n"
        "enable_notebook_offline()",
        'frame = pd.DataFrame({"domain": ["prose", "code"], "loss": [3.5, 2.25]})\n'
        'alt.Chart(frame).mark_bar().encode(x="domain:N", y="loss:Q").properties(title="loss by domain")',
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3").execute()
    path = tmp_path / "charts.ipynb"
    nbformat.write(notebook, path)
    saved = nbformat.read(path, as_version=4)
    nbformat.validate(saved)
    (output,) = saved.cells[1].outputs
    assert output.output_type == "execute_result"
    assert output.data["image/svg+xml"].lstrip().startswith("<svg")
    assert "loss by domain" in output.data["image/svg+xml"]
    assert output.data["text/plain"] == "Chart: loss by domain"
    assert "application/vnd.jupyter.widget-view+json" in output.data
    outputs = json.dumps([cell.get("outputs", []) for cell in saved.cells])
    assert "cdn.jsdelivr" not in outputs and not re.search(r"<script[^>]*src=", outputs)
    assert "https://" not in outputs
