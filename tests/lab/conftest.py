"""Fixtures of the JupyterLab browser tests: where artifacts go, and headless Chromium (Debian's, through
Playwright). The server and page helpers are in `lab_session.py`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from lab_session import CHROMIUM_ARGS, ROOT


@pytest.fixture(scope="module")
def artifacts() -> Path:
    """Where screenshots and logs go: $WORKBENCH_ARTIFACTS, default .artifacts/ in the repository."""
    folder = Path(os.environ.get("WORKBENCH_ARTIFACTS", ROOT / ".artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


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
