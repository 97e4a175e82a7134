"""A real JupyterLab in headless Chromium runs notebooks/07_live.ipynb, then a slider moves and heads are
clicked: the metrics and the coloured tokens must change, with no console error and no outside request.

Runs in its own pytest invocation (`python -m pytest tests/lab`; the default test paths leave it out):
a Jupyter server and Playwright's sync API do not share one pytest process well. Screenshots go to
$WORKBENCH_ARTIFACTS (default: .artifacts/ in the repository).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = "notebooks/07_live.ipynb"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
RUN_ALL_SECONDS = 900  # SmolLM2 loads and each widget computes its first state


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def artifacts() -> Path:
    folder = Path(os.environ.get("WORKBENCH_ARTIFACTS", ROOT / ".artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def lab(tmp_path_factory, artifacts):
    """`jupyter lab` on a free port with a token, its settings and workspaces in a temporary folder."""
    home = tmp_path_factory.mktemp("lab")
    root = tmp_path_factory.mktemp("lab-root")  # Lab autosaves: run a copy, never the repository's file
    (root / "notebooks").mkdir()
    shutil.copy(ROOT / NOTEBOOK, root / NOTEBOOK)
    settings = home / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    port, token = free_port(), secrets.token_hex(16)
    command = [
        sys.executable,
        "-m",
        "jupyter",
        "lab",
        "--no-browser",
        "--allow-root",
        f"--port={port}",
        "--ip=127.0.0.1",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        f"--LabApp.user_settings_dir={home / 'settings'}",
        f"--LabApp.workspaces_dir={home / 'workspaces'}",
    ]
    log = open(artifacts / "jupyter-lab.log", "w")  # noqa: SIM115 - open for the server's lifetime
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            pytest.fail(f"jupyter lab did not start; see {artifacts / 'jupyter-lab.log'}")
        time.sleep(0.5)
    yield url, token
    server.terminate()
    try:
        server.wait(20)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


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
    origin = url
    outside, errors = [], []
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)

    def guard(route):
        request_url = route.request.url
        if request_url.startswith((origin, "data:", "blob:")):
            route.continue_()
        else:
            outside.append(request_url)
            route.abort()

    page.route("**/*", guard)
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

    assert outside == [], f"outside requests: {outside[:5]}"
    assert errors == [], f"console errors: {errors[:5]}"
    page.close()
