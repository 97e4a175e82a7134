"""The server extension's settings (Jupyter config: `c.WorkbenchLab.<name>` or `--WorkbenchLab.<name>=`),
and where they put the runs root."""

from __future__ import annotations

import os
from pathlib import Path

from traitlets import Float, Int, Unicode
from traitlets.config import Configurable


class WorkbenchLab(Configurable):
    """Settings of the workbench's Jupyter server extension."""

    runs_root = Unicode(
        "",
        help="Folder of the run folders the panel lists and its jobs write to (relative: to the server's "
        "root_dir). Empty: $WORKBENCH_RUNS, else <root_dir>/runs.",
    ).tag(config=True)
    poll_interval_s = Float(
        1.0, help="Seconds between checks of a run's progress.json while a progress stream is open."
    ).tag(config=True)
    cancel_grace_s = Float(
        10.0,
        help="Seconds a cancelled job has to stop after SIGINT before SIGTERM (and as long again: SIGKILL).",
    ).tag(config=True)
    max_running_jobs = Int(4, help="The most jobs this server runs at once; more are refused.").tag(
        config=True
    )


def resolve_runs_root(setting: str, root_dir: str) -> Path:
    """The runs root: `setting`, else $WORKBENCH_RUNS, else <root_dir>/runs; relative ones under root_dir."""
    chosen = setting or os.environ.get("WORKBENCH_RUNS", "") or "runs"
    path = Path(chosen).expanduser()
    return (path if path.is_absolute() else Path(root_dir).expanduser() / path).absolute()
