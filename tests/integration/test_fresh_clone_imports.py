"""A fresh clone used from its root: no top-level folder may shadow an installed distribution.

Python started at the repository root puts the root first on `sys.path`. A top-level folder with an
`__init__.py` would then win over an installed package of the same name, as `kernels/` once did over
Hugging Face's `kernels`, which `transformers.activations` imports.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOP_LEVEL = ("kernels", "probes", "app", "data", "tests", "notebooks")

PROBE = """
import importlib.util, json, sys
import transformers.activations  # imports Hugging Face's `kernels` where transformers depends on it
import workbench, workbench.kernels, workbench.probes
import workbench.kernels.sparse_mlp, workbench.probes.capture
from workbench.paths import data_dir
found = {}
for name in sys.argv[1:]:
    spec = importlib.util.find_spec(name)
    found[name] = None if spec is None else spec.origin
print(json.dumps({"found": found, "data_dir": str(data_dir())}))
"""


def test_no_top_level_folder_is_a_regular_package():
    assert (ROOT / "workbench" / "__init__.py").is_file()
    packages = [name for name in TOP_LEVEL if (ROOT / name / "__init__.py").exists()]
    assert packages == [], f"{packages} would shadow installed distributions from the repository root"


def test_imports_from_the_repository_root_resolve_to_installed_code():
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *TOP_LEVEL],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    for name, origin in report["found"].items():
        # None: nothing by that name; "namespace"/None origin: a namespace portion, which never wins over
        # an installed regular package; a file: must not be one of ours.
        if origin not in (None, "namespace"):
            assert not Path(origin).resolve().is_relative_to(ROOT), f"`import {name}` resolves to {origin}"
    assert (Path(report["data_dir"]) / "corpus").is_dir()
