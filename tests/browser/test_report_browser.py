"""A real browser opens report.html with every outside request blocked, and every chart draws."""

from __future__ import annotations

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


def assert_every_chart_draws(browser, report, expected: int) -> None:
    """Open report.html with every outside request aborted; each chart must get an SVG and no error."""
    page_url = report.resolve().as_uri()
    outside, errors = [], []
    page = browser.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))

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
