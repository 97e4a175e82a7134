"""`import workbench` and loading the Jupyter server extension stay cheap: no torch, pandas or altair
until a request needs results (every Jupyter server with the workbench installed loads the extension)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "pandas", "altair", "transformers")


@pytest.mark.parametrize(
    "imports",
    [
        "import workbench",
        "import jupyter_server.serverapp; import workbench.lab; import workbench.lab.handlers",
    ],
)
def test_no_heavy_package_is_imported(imports):
    code = f"import sys; {imports}; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
