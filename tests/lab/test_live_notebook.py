"""A real JupyterLab in headless Chromium runs notebooks/07_live.ipynb, then a slider moves and heads are
clicked: the metrics and the coloured tokens must change, with no console error and no outside request.

Runs in its own pytest invocation (`python -m pytest tests/lab`; the default test paths leave it out):
a Jupyter server and Playwright's sync API do not share one pytest process well. Screenshots go to
$WORKBENCH_ARTIFACTS (default: .artifacts/ in the repository).
"""

from __future__ import annotations

import shutil
import time

import pytest

from lab_session import ROOT, GuardedPage, jupyter_lab

pytestmark = pytest.mark.browser

NOTEBOOK = "notebooks/07_live.ipynb"
RUN_ALL_SECONDS = 900  # SmolLM2 loads and each widget computes its first state


@pytest.fixture(scope="module")
def lab(tmp_path_factory, artifacts):
    """`jupyter lab` (lab_session.jupyter_lab) serving a copy of the notebook: Lab autosaves, so it never
    runs the repository's file."""
    root = tmp_path_factory.mktemp("lab-root")
    (root / "notebooks").mkdir()
    shutil.copy(ROOT / NOTEBOOK, root / NOTEBOOK)
    with jupyter_lab(tmp_path_factory.mktemp("lab"), root, artifacts / "jupyter-lab.log") as server:
        yield server


def metric_text(widget) -> str:
    return " ".join(widget.locator(".wb-metric").all_inner_texts())


def token_colours(widget) -> list[str]:
    return widget.locator(".wb-token").evaluate_all("spans => spans.map(s => s.style.background)")


def wait_for_change(read, before, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = read()
        if now != before:
            return now
        time.sleep(0.25)
    raise AssertionError(f"nothing changed within {timeout} s (still {before!r})")


def test_live_notebook_in_jupyterlab(lab, browser, artifacts):
    url, token = lab
    guarded = GuardedPage(browser, url)
    page = guarded.page
    channels = []  # the kernel's websocket: Lab shows "idle" before a kernel is connected, too
    page.on("websocket", lambda ws: channels.append(ws.url) if "/channels" in ws.url else None)
    page.goto(f"{url}/lab/tree/{NOTEBOOK}?token={token}")
    page.locator(".jp-Notebook").first.wait_for(timeout=120_000)
    deadline = time.monotonic() + 120
    while not channels and time.monotonic() < deadline:
        page.wait_for_timeout(250)
    assert channels, "the notebook's kernel never connected"
    page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').first.wait_for(
        state="attached", timeout=120_000
    )
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator('[data-command="runmenu:run-all"]').first.click()

    # Every cell done: no prompt left at [*] (and at least one widget drawn).
    page.locator(".wb-metrics").first.wait_for(timeout=RUN_ALL_SECONDS * 1000)
    deadline = time.monotonic() + RUN_ALL_SECONDS
    while page.locator(".jp-InputPrompt", has_text="[*]").count() and time.monotonic() < deadline:
        time.sleep(1)
    assert page.locator(".jp-InputPrompt", has_text="[*]").count() == 0, "run-all did not finish"
    page.screenshot(path=str(artifacts / "lab-after-run-all.png"), full_page=True)
    failed = page.locator('[data-mime-type="application/vnd.jupyter.error"]')
    assert failed.count() == 0, failed.first.inner_text()

    explorer = page.locator(".wb-edit-explorer").first
    explorer.scroll_into_view_if_needed()
    explorer.locator(".wb-token").first.wait_for(timeout=60_000)
    metrics, colours = metric_text(explorer), token_colours(explorer)
    explorer.screenshot(path=str(artifacts / "edit-explorer-before.png"))

    # Move the weight-pruning slider (its tab first), as a user drags it.
    explorer.locator(".lm-TabBar-tab, .p-TabBar-tab", has_text="weights").first.click()
    slider = explorer.locator(".widget-slider", has=page.locator("label", has_text="prune")).first
    handle = slider.locator(".noUi-handle").first
    handle.wait_for(timeout=30_000)
    box = handle.bounding_box()
    track = slider.locator(".noUi-target").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(track["x"] + track["width"] * 0.45, box["y"] + box["height"] / 2, steps=8)
    page.mouse.up()
    metrics_after = wait_for_change(lambda: metric_text(explorer), metrics)
    colours_after = wait_for_change(lambda: token_colours(explorer), colours)
    assert metrics_after != metrics and colours_after != colours
    explorer.screenshot(path=str(artifacts / "edit-explorer-pruned.png"))

    # The attention viewer: a click shows the head's pattern; a shift-click masks it in the explorer.
    viewer = page.locator(".wb-attention-viewer").first
    viewer.scroll_into_view_if_needed()
    cell = viewer.locator(".wb-cell").nth(3)
    cell.click()
    viewer.locator(".wb-pattern canvas").first.wait_for(timeout=60_000)
    cell.click(modifiers=["Shift"])
    wait_for_change(lambda: metric_text(explorer), metrics_after)
    viewer.screenshot(path=str(artifacts / "attention-viewer.png"))
    page.screenshot(path=str(artifacts / "lab-after-edits.png"), full_page=True)

    guarded.assert_clean()
    page.close()
