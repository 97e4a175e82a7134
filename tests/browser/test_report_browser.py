"""A real browser opens report.html with every outside request blocked, and every chart draws."""

from __future__ import annotations

import shutil

import pytest

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


def test_every_chart_draws_offline(browser, checkpoints, tmp_path):
    model = ["--model", str(checkpoints["mixtral"]), "--tokens", "256", "--context", "32"]
    capture_run = tmp_path / "capture"
    assert main(["capture", *model, "--attention", "--routing", "--out", str(capture_run)]) == 0
    out = tmp_path / "run"
    assert main(["report", *model, "--out", str(out), "--include", str(capture_run)]) == 0
    page_url = (out / "report.html").resolve().as_uri()
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
    # 5 of the evaluation report, 3 of the MoE routing section, attention entropy and expert load
    assert charts.count() == 10
    for i in range(charts.count()):
        charts.nth(i).locator("svg, canvas").first.wait_for(state="attached", timeout=30_000)
        assert "chart failed" not in charts.nth(i).inner_text()
    marks = page.locator(
        "div.chart svg .mark-rect path, div.chart svg .mark-line path, div.chart svg .mark-rect"
    )
    assert marks.count() > 0
    assert outside == [] and errors == []
    page.close()
