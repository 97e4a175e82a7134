"""A real browser opens report.html with every outside request blocked, and every chart draws."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from workbench.cli import main

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api")
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("Chromium is missing: apt-get install -y chromium (see the README's test command).")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def assert_every_chart_draws(browser, report, expected: int, page=None) -> None:
    """Open report.html with every outside request aborted; each chart must get an SVG and no error.

    Console errors count as errors too: a script or style that the report's Content-Security-Policy
    refuses shows up there."""
    page_url = report.resolve().as_uri()
    outside, errors = [], []
    own_page = page is None
    page = browser.new_page() if own_page else page
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)

    def guard(route):
        if route.request.url == page_url:
            route.continue_()
        else:  # anything else (CDN, fonts, data files) is an outside request: block and remember it
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", guard)
    page.goto(page_url)
    charts = page.locator("div.chart")
    assert charts.count() == expected
    for i in range(charts.count()):
        charts.nth(i).locator("svg, canvas").first.wait_for(state="attached", timeout=30_000)
        assert "chart failed" not in charts.nth(i).inner_text()
    marks = page.locator(
        "div.chart svg .mark-rect path, div.chart svg .mark-line path, div.chart svg .mark-rect"
    )
    assert marks.count() > 0
    assert outside == [] and errors == []
    if own_page:
        page.close()


def test_every_chart_draws_offline(browser, checkpoints, tmp_path):
    model = ["--model", str(checkpoints["mixtral"]), "--tokens", "256", "--context", "32"]
    capture_run = tmp_path / "capture"
    assert main(["capture", *model, "--attention", "--routing", "--out", str(capture_run)]) == 0
    out = tmp_path / "run"
    assert main(["report", *model, "--out", str(out), "--include", str(capture_run)]) == 0
    # 5 of the evaluation report, 3 of the MoE routing section, attention entropy and expert load
    assert_every_chart_draws(browser, out / "report.html", 10)


def test_analysis_sections_draw_offline(browser, checkpoints, tmp_path):
    """Experts, masking, MoEfication, transcoder training, evaluation, features and a circuit."""
    from workbench.models import load_model
    from workbench.runs import RunFolder
    from workbench.transcoders.circuits import Target, attribute
    from workbench.transcoders.run import load_any

    small = ["--tokens", "256", "--context", "32"]
    dense, moe = ["--model", str(checkpoints["gpt2"])], ["--model", str(checkpoints["mixtral"])]
    runs = {
        name: tmp_path / name
        for name in ("experts", "moefy", "train", "eval", "circuit", "replay", "finercut")
    }
    assert (
        main(["experts", *moe, *small, "--mask", "reroute", "--baseline", "--out", str(runs["experts"])]) == 0
    )
    assert (
        main(
            ["moefy", *dense, *small, "--experts", "4", "--train-tokens", "512", "--out", str(runs["moefy"])]
        )
        == 0
    )
    train = ["--layer", "1", "--width", "64", "--k", "4", "--batch-tokens", "256", "--context", "32"]
    assert main(["transcoder", "train", *dense, *train, "--tokens", "5120", "--out", str(runs["train"])]) == 0
    assert (
        main(
            [
                "transcoder",
                "eval",
                str(runs["train"]),
                *dense,
                *small,
                "--features",
                "--out",
                str(runs["eval"]),
            ]
        )
        == 0
    )
    edit = '[{"kind": "head_mask", "layer": 1, "heads": [0]}, {"kind": "topk", "layer": 0, "k": 8}]'
    assert main(["replay", *dense, *small, "--edit", edit, "--out", str(runs["replay"])]) == 0
    cut = ["--calibration-tokens", "64", "--max-share", "0.5"]
    assert main(["finercut", *dense, *small, *cut, "--out", str(runs["finercut"])]) == 0
    handle = load_model(str(checkpoints["gpt2"]), progress=False)
    traced = attribute(handle, torch.arange(20, 36), {1: load_any(runs["train"])}, Target("logit", 10, 5))
    with RunFolder.create(runs["circuit"], "circuit", "test") as run:
        run.save([traced])
    out = tmp_path / "report"
    included = [str(path) for path in runs.values()]
    assert main(["report", *dense, *small, "--out", str(out), "--include", *included]) == 0
    # 5 evaluation + experts 3 + masking 1 + moefy 1 + training 1 + eval 2 + features 2 + circuit 1
    # + replay 2 + finercut 1
    assert_every_chart_draws(browser, out / "report.html", 19)


# Hostile strings for every field that can reach a report. A file or folder name cannot hold "/", so the
# names use a tag that needs no closing script tag; the data fields carry the full "</script>" breakout.
HOSTILE = "</script><img src=x onerror=alert(1)>\u2028<!--<script>alert(2)</script>"
HOSTILE_NAME = "<img src=x onerror=alert(3)> & <svg onload=alert(4)>"


def write_hostile_checkpoint(source, folder):
    """The gpt2 test checkpoint under a hostile folder name, whose tokenizer has a hostile token."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.add_tokens([HOSTILE])
    model = GPT2LMHeadModel.from_pretrained(source)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def hostile_strings(value):
    """Every string value of a results.json gets the hostile string appended (kinds stay readable)."""
    if isinstance(value, dict):
        return {k: v if k == "kind" else hostile_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [hostile_strings(v) for v in value]
    return value + HOSTILE if isinstance(value, str) else value


def test_hostile_strings_stay_text(browser, checkpoints, tmp_path):
    """Model name, text file names, domains, token text and a hand-edited results.json never run as code."""
    model_dir = write_hostile_checkpoint(checkpoints["gpt2"], tmp_path / HOSTILE_NAME)
    jsonl = tmp_path / f"{HOSTILE_NAME}.jsonl"
    rows = [
        {"domain": HOSTILE if i % 2 else "prose", "text": f"{HOSTILE} the cat sat on the mat {i}. " * 20}
        for i in range(12)
    ]
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))
    txt = tmp_path / f"{HOSTILE_NAME}.txt"
    txt.write_text(f"{HOSTILE} plain words and more words. " * 60)
    inputs = ["--model", str(model_dir), "--text", str(jsonl), str(txt), "--tokens", "256", "--context", "32"]
    replay = tmp_path / "replay"
    edit = '[{"kind": "head_mask", "layer": 1, "heads": [0]}]'
    assert main(["replay", *inputs, "--edit", edit, "--out", str(replay)]) == 0
    tokens = json.loads((replay / "results.json").read_text())["results"][0]["per_token"]
    assert any(t["token"] == HOSTILE for t in tokens)  # the hostile token really reaches the report
    edited = tmp_path / "edited"  # a copy of the run whose results.json a user edited by hand
    shutil.copytree(replay, edited)
    body = json.loads((edited / "results.json").read_text())
    for result in body["results"]:
        result.update(hostile_strings({k: v for k, v in result.items() if k != "provenance"}))
        result["provenance"]["definition"] += HOSTILE
        result["provenance"]["model"] = hostile_strings(result["provenance"]["model"])
    (edited / "results.json").write_text(json.dumps(body))
    out = tmp_path / "report"
    assert main(["report", *inputs, "--out", str(out), "--include", str(replay), str(edited)]) == 0
    report = out / "report.html"

    dialogs = []
    page = browser.new_page()
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    try:
        assert_every_chart_draws(browser, report, 5 + 2 + 2, page=page)
    finally:  # injected markup is the failure to report, before any chart that it broke
        assert dialogs == []
        assert page.locator("img, iframe, object, embed, script[src], svg[onload]").count() == 0
        assert page.locator("[onerror], [onload]").count() == 0
        assert page.locator("script").count() == 3  # the report's own: chart data, Vega, the embedding
    # the hostile strings are on the page as plain text, and in the charts, unchanged
    assert HOSTILE_NAME in page.locator("h1").inner_text()
    assert HOSTILE.split("\u2028")[0] in page.locator("body").inner_text()
    chart_text = " ".join(page.locator("div.chart svg").all_text_contents())
    assert HOSTILE_NAME in chart_text and HOSTILE.split("\u2028")[0] in chart_text
    # the Content-Security-Policy is in force: an inline script that got in some other way does not run
    injected = """() => { const s = document.createElement("script"); s.textContent = "window.injected = 1";
        document.body.append(s); return window.injected === 1; }"""
    assert page.evaluate(injected) is False
    page.close()
