"""The JupyterLab browser tests' tools: a Lab server on a free port with a token, and a page that records
console errors and refuses every request that leaves the server's origin. Imported by name
(`from lab_session import jupyter_lab`): a helper kept in a conftest would be shadowed by another
folder's conftest (the tests folders have no `__init__.py`)."""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def jupyter_lab(home: Path, root_dir: Path, log_path: Path, extra: tuple[str, ...] = ()):
    """`jupyter lab` serving `root_dir` on a free port with a token; yields (url, token).

    Its settings (the news prompt off) and workspaces live under `home`; its output goes to `log_path`.
    """
    settings = home / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)
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
        f"--ServerApp.root_dir={root_dir}",
        f"--LabApp.user_settings_dir={home / 'settings'}",
        f"--LabApp.workspaces_dir={home / 'workspaces'}",
        *extra,
    ]
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=root_dir)
        try:
            deadline = time.monotonic() + 90
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"jupyter lab did not start; see {log_path}")
                time.sleep(0.5)
            yield url, token
        finally:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()


class GuardedPage:
    """A page whose console errors and outside requests (anything not from `origin`) are recorded; the
    outside requests are refused."""

    def __init__(self, browser, origin: str, viewport: dict | None = None) -> None:
        self.outside: list[str] = []
        self.errors: list[str] = []
        self.page = browser.new_page(viewport=viewport or {"width": 1400, "height": 1000})
        self.page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        self.page.on("console", lambda msg: self.errors.append(msg.text) if msg.type == "error" else None)

        def guard(route):
            request_url = route.request.url
            if request_url.startswith((origin, "data:", "blob:")):
                route.continue_()
            else:
                self.outside.append(request_url)
                route.abort()

        self.page.route("**/*", guard)

    def expected_errors(self, text: str) -> list[str]:
        """Take out (and return) the console errors containing `text`: ones a test provoked on purpose."""
        taken = [e for e in self.errors if text in e]
        self.errors = [e for e in self.errors if text not in e]
        return taken

    def assert_clean(self) -> None:
        assert self.outside == [], f"outside requests: {self.outside[:5]}"
        assert self.errors == [], f"console errors: {self.errors[:5]}"
