"""A Jupyter server with the workbench's extension, for the handler tests (pytest-jupyter's fixtures).

pytest-jupyter's server fixtures and Playwright's sync API break each other in one pytest process, so these
tests never share a run with tests/lab. The fixtures come in through this conftest (not `pytest_plugins`),
so they exist only under tests/app.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
from pytest_jupyter.jupyter_server import *  # noqa: F403  (jp_fetch, jp_serverapp, ... and their hooks)

from workbench.runs import RunFolder


@pytest.fixture(scope="session")
def real_runs(tmp_path_factory) -> Path:
    """Two complete sparsity runs of tiny-relu (seeds 0 and 1), computed once for the session."""
    from workbench.corpus import windows_for
    from workbench.models import load_model
    from workbench.sparsity.run import SparsitySettings, run_sparsity

    folder = tmp_path_factory.mktemp("real-runs")
    handle = load_model("tiny-relu", device="cpu", progress=False)
    for seed in (0, 1):
        windows = windows_for(handle, corpus=None, text=None, context=64, n_tokens=256, seed=seed)
        with RunFolder.create(
            folder / f"sparsity-{seed}", "sparsity", f"workbench sparsity --seed {seed}"
        ) as run:
            result = run_sparsity(handle, windows, SparsitySettings(seed=seed))
            run.save([result])
    return folder


@pytest.fixture
def runs_root(tmp_path, real_runs) -> Path:
    """This test's runs root, holding copies of the two real runs."""
    root = tmp_path / "runs"
    root.mkdir()
    for run in real_runs.iterdir():
        shutil.copytree(run, root / run.name)
    return root


@pytest.fixture
def jp_server_config(runs_root):
    return {
        "ServerApp": {"jpserver_extensions": {"workbench.lab": True}},
        "WorkbenchLab": {"runs_root": str(runs_root), "poll_interval_s": 0.1, "cancel_grace_s": 5.0},
    }


@pytest.fixture(autouse=True)
def _quiet_generic_kinds():
    """Runs of made-up kinds read back as generic results, which warns; that is expected here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="no installed package provides result kind")
        yield
