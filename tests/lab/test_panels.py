"""The workbench's Lab panels in a real JupyterLab (headless Chromium) against the real server extension.

Two `essential` runs on tiny-relu (different seeds) are made with `python -m workbench` before Lab
starts. Then, as a user would: the Runs panel lists and filters them; a run opens with its charts drawn,
its report in a sandboxed iframe and its provenance; the two runs compare side by side with overlaid
curves; the New analysis form shows the server's refusal, then starts a short analysis that the panel
and its Run view show running (progress bar) and then complete (charts drawn, no reload); "Open in
notebook" runs the loading cell in a new notebook without error; a long job is cancelled from the panel
and its run closes as interrupted. No console error, no request leaving the server's origin.

Needs the package installed (`pip install -e .` builds the extension and enables the server extension).
Runs in its own pytest invocation (`python -m pytest tests/lab/test_panels.py -p no:cacheprovider
-o addopts=""`). Screenshots go to $WORKBENCH_ARTIFACTS (default: .artifacts/): runs-panel.png,
run-view.png, compare.png, new-analysis.png, run-running.png, notebook.png.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import pytest

from lab_session import GuardedPage, jupyter_lab

pytestmark = pytest.mark.browser

MODEL = "tiny-relu"
SEEDS = (0, 1)
JOB_SECONDS = 600  # the analysis started from the form, on a loaded two-core machine
KERNEL_SECONDS = 240  # a new notebook's kernel starts and imports workbench (torch)


def run_name(seed: int) -> str:
    return f"essential-seed{seed}"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Lab's root folder, with runs/ holding two finished `essential` runs of tiny-relu."""
    root = tmp_path_factory.mktemp("workspace")
    for seed in SEEDS:
        out = root / "runs" / run_name(seed)
        command = [sys.executable, "-m", "workbench", "essential", "--model", MODEL, "--tokens", "512"]
        command += ["--levels", "0,0.25,0.5,0.75", "--refine", "1", "--device", "cpu", "--seed", str(seed)]
        subprocess.run([*command, "--out", str(out)], check=True, cwd=root, capture_output=True, timeout=600)
    return root


@pytest.fixture(scope="module")
def lab(workspace, tmp_path_factory, artifacts):
    home = tmp_path_factory.mktemp("lab-home")
    log, runs = artifacts / "jupyter-lab-panels.log", f"--WorkbenchLab.runs_root={workspace / 'runs'}"
    with jupyter_lab(home, workspace, log, (runs,)) as (url, token):
        try:
            with urllib.request.urlopen(f"{url}/workbench/api/runs?token={token}", timeout=30) as response:
                listing = json.load(response)
        except OSError as err:
            pytest.fail(
                f"the workbench server extension does not answer ({err}): install the package "
                "(pip install -e .) so that etc/jupyter/jupyter_server_config.d enables workbench.lab"
            )
        assert sorted(row["id"] for row in listing["runs"]) == [run_name(s) for s in SEEDS]
        yield url, token


@pytest.fixture(scope="module")
def guarded(lab, browser):
    url, token = lab
    guarded = GuardedPage(browser, url)
    guarded.page.goto(f"{url}/lab?token={token}")
    guarded.page.locator(".jp-Launcher").first.wait_for(timeout=120_000)
    yield guarded
    guarded.page.close()


def widen_sidebar(page, by: int = 140) -> None:
    """Drag the left sidebar's edge to the right, as a user makes room for the Runs panel."""
    handle = page.locator("#jp-main-split-panel > .lm-SplitPanel-handle:visible").first
    box = handle.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + by, y, steps=5)
    page.mouse.up()


def rows(page):
    return page.locator(".wb-runs-panel .wb-run-row")


def wait_until(condition, timeout: float, what: str, every: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout} s")


def test_runs_panel_lists_and_filters_the_runs(guarded, artifacts):
    page = guarded.page
    # The Launcher offers the New analysis form.
    page.locator(".jp-LauncherCard", has_text="New Analysis").first.wait_for(timeout=30_000)
    page.locator('.lm-TabBar-tab[data-id="wb-runs-panel"]').click()
    panel = page.locator(".wb-runs-panel")
    panel.wait_for(timeout=30_000)
    widen_sidebar(page)
    wait_until(lambda: rows(page).count() == 2, 30, "two rows in the Runs panel")
    for seed in SEEDS:
        row = panel.locator(f'.wb-run-row[data-run-id="{run_name(seed)}"]')
        assert row.locator(".wb-status-complete").count() == 1
        assert "essential" in row.locator(".wb-run-kind").inner_text()
        assert row.locator(".wb-run-model").inner_text() == MODEL
        assert row.locator(".wb-figure").count() >= 1, "no headline figures"
    # The filter box and the status filter go through the server's query.
    panel.locator(".wb-runs-filter").fill("seed1")
    wait_until(lambda: rows(page).count() == 1, 10, "the filter keeps one run")
    assert rows(page).first.get_attribute("data-run-id") == run_name(1)
    panel.locator(".wb-runs-filter").fill("")
    panel.locator(".wb-runs-status").select_option("failed")
    wait_until(lambda: rows(page).count() == 0 and panel.locator(".wb-empty").count(), 10, "no failed runs")
    panel.locator(".wb-runs-status").select_option("")
    wait_until(lambda: rows(page).count() == 2, 10, "both runs back")
    page.screenshot(path=str(artifacts / "runs-panel.png"))
    guarded.assert_clean()


def test_run_view_draws_charts_report_and_provenance(guarded, artifacts):
    page = guarded.page
    page.locator(f'.wb-run-row[data-run-id="{run_name(0)}"]').click()
    view = page.locator(".wb-run-view")
    view.wait_for(timeout=30_000)
    image = view.locator(".wb-chart-image").first
    image.wait_for(timeout=120_000)
    assert image.get_attribute("src").startswith("data:image/svg+xml")
    wait_until(lambda: image.evaluate("img => img.complete && img.naturalWidth > 0"), 30, "the chart drew")
    assert view.locator(".wb-figure").count() >= 1
    frame = view.locator("iframe.wb-report-frame")
    assert frame.get_attribute("sandbox") == "", "the report iframe must be sandboxed without scripts"
    assert "/workbench/api/runs/" in frame.get_attribute("src")
    assert frame.get_attribute("src").split("?")[0].endswith(f"{run_name(0)}/report")
    # The report renders as HTML (a heading, its tables), not as source text.
    report = page.frame_locator("iframe.wb-report-frame")
    report.locator("h1").first.wait_for(timeout=60_000)
    assert report.locator("table").count() >= 1
    provenance = view.locator(".wb-provenance .wb-json")
    assert "command" in provenance.inner_text()
    page.screenshot(path=str(artifacts / "run-view.png"))
    guarded.assert_clean()


def test_compare_two_runs(guarded, artifacts):
    page = guarded.page
    if not page.locator(".wb-runs-panel").is_visible():
        page.locator('.lm-TabBar-tab[data-id="wb-runs-panel"]').click()
    for seed in SEEDS:
        page.locator(f'.wb-run-row[data-run-id="{run_name(seed)}"] .wb-run-select').check()
    button = page.locator(".wb-compare-button")
    assert button.is_enabled()
    button.click()
    view = page.locator(".wb-compare-view")
    view.locator(".wb-compare-runs").wait_for(timeout=60_000)
    heads = view.locator(".wb-compare-runs thead th").all_inner_texts()
    assert sorted(heads[1:]) == [run_name(s) for s in SEEDS]
    assert view.locator(".wb-compare-figure").count() >= 1, "no headline figure side by side"
    image = view.locator(".wb-chart-image").first
    image.wait_for(timeout=60_000)
    wait_until(lambda: image.evaluate("img => img.complete && img.naturalWidth > 0"), 30, "the overlay drew")
    page.screenshot(path=str(artifacts / "compare.png"))
    guarded.assert_clean()


def start_form(page):
    """The New analysis form, from the command palette."""
    page.keyboard.press("Control+Shift+C")
    palette = page.locator(".lm-CommandPalette-input")
    palette.wait_for(timeout=10_000)
    palette.fill("New Workbench Analysis")
    page.locator(".lm-CommandPalette-item", has_text="New Workbench Analysis").first.click()
    form = page.locator(".wb-new-analysis")
    form.locator(".wb-command-select option").first.wait_for(state="attached", timeout=30_000)
    return form


@pytest.fixture(scope="module")
def started() -> dict:
    """What the form started, for the tests after it."""
    return {}


def fill_essential(form, tokens: int) -> None:
    form.locator(".wb-command-select").select_option("essential")
    form.locator('[data-field="tokens"] input').fill(str(tokens))
    form.locator('[data-field="device"] select').select_option(label="cpu")


def submit(form) -> str:
    """Start the form's analysis; the new run's id."""
    form.locator(".wb-form-submit").click()
    link = form.locator(".wb-form-started .wb-form-open-run")
    link.wait_for(timeout=30_000)
    return link.inner_text()


def test_new_analysis_runs_to_complete_in_the_panel(guarded, artifacts, started):
    page = guarded.page
    form = start_form(page)
    # A request the server refuses: its message shows in the form.
    form.locator(".wb-command-select").select_option("capture")
    form.locator(".wb-form-submit").click()
    refusal = form.locator(".wb-form-message .wb-error")
    refusal.wait_for(timeout=30_000)
    assert "at least one of" in refusal.inner_text(), refusal.inner_text()
    # Chromium logs the refused request (400) as a console error: that one was asked for.
    assert len(guarded.expected_errors("status of 400")) == 1

    fill_essential(form, 2048)
    run = started["run"] = submit(form)
    page.screenshot(path=str(artifacts / "new-analysis.png"))

    # The panel shows the job running, with its progress bar, then complete, without a reload.
    row = page.locator(f'.wb-runs-panel .wb-run-row[data-run-id="{run}"]')
    seen: set[str] = set()

    def ended():
        if row.count() == 0:
            return False
        badge = row.first.locator(".wb-status").first.inner_text()
        if badge == "running" and row.first.locator(".wb-progress").count():
            seen.add("progress")
        seen.add(badge)
        return badge in ("complete", "failed", "interrupted")

    wait_until(lambda: ended() or "progress" in seen, JOB_SECONDS, f"run {run} shows its progress", every=0.2)
    assert "progress" in seen, f"run {run} ended ({seen}) before the panel showed a progress bar"
    # Its Run view follows it live: the progress while it runs, the charts once it completes.
    row.first.click()
    view = page.locator(".wb-run-view:visible")
    view.locator(".wb-run-live .wb-progress").wait_for(timeout=20_000)
    assert view.locator(".wb-open-notebook").is_disabled(), "a running run cannot load in a notebook"
    page.screenshot(path=str(artifacts / "run-running.png"))

    wait_until(ended, JOB_SECONDS, f"run {run} ends", every=0.2)
    assert "complete" in seen, f"run {run} ended as {seen}"
    view.locator(".wb-run-header .wb-status-complete").wait_for(timeout=30_000)
    view.locator(".wb-chart-image").first.wait_for(timeout=60_000)
    guarded.assert_clean()


def test_open_in_notebook_runs_the_loading_cell(guarded, artifacts, started):
    page = guarded.page
    run = started.get("run")
    assert run, "the New analysis test started no run"
    page.locator(f'.wb-runs-panel .wb-run-row[data-run-id="{run}"]').click()
    view = page.locator(".wb-run-view:visible")
    button = view.locator(".wb-open-notebook")
    wait_until(button.is_enabled, 30, "open in notebook enabled")
    button.click()
    notebook = page.locator(".jp-NotebookPanel:visible")
    notebook.wait_for(timeout=60_000)
    cell = notebook.locator(".jp-CodeCell").first
    prompt = cell.locator(".jp-InputPrompt")
    wait_until(lambda: "[1]:" in prompt.inner_text(), KERNEL_SECONDS, "the cell ran", every=0.5)
    source = cell.locator(".jp-InputArea-editor").inner_text()
    assert "workbench.load_run(" in source and run in source, source
    errors = notebook.locator('[data-mime-type="application/vnd.jupyter.error"]')
    assert errors.count() == 0, errors.first.inner_text()
    output = cell.locator(".jp-OutputArea-output").first
    output.wait_for(timeout=30_000)
    assert "Essential" in output.inner_text() or "essential" in output.inner_text(), output.inner_text()
    page.screenshot(path=str(artifacts / "notebook.png"))
    guarded.assert_clean()


def test_cancel_a_running_job(guarded):
    page = guarded.page
    form = start_form(page)
    fill_essential(form, 500_000)
    run = submit(form)
    row = page.locator(f'.wb-runs-panel .wb-run-row[data-run-id="{run}"]:not(.wb-job-row)')
    row.locator(".wb-status-running").wait_for(timeout=JOB_SECONDS * 1000)
    cancel = row.locator(".wb-run-cancel")
    cancel.click()
    row.locator(".wb-status-interrupted").wait_for(timeout=120_000)
    cancel.wait_for(state="detached", timeout=60_000)  # gone once the run stopped running
    guarded.assert_clean()
