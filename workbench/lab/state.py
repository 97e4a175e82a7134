"""What one Jupyter server's extension holds: its settings, runs index, jobs, chart cache and whitelist.

One instance per server, kept in the Tornado application's settings (no module-level state), so two
servers in one process (as in the tests) never share runs, jobs or caches.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from workbench.lab.charts import ChartRenderer
from workbench.lab.commands import CommandSpec, registry_choices, whitelist
from workbench.lab.config import WorkbenchLab
from workbench.lab.index import RunsIndex
from workbench.lab.jobs import JobManager
from workbench.lab.paths import NotFound

SETTINGS_KEY = "workbench_lab"


class LabState:
    def __init__(self, config: WorkbenchLab, root: Path) -> None:
        self.config, self.root = config, root
        self.index = RunsIndex(root)
        self.jobs = JobManager(root, grace_s=config.cancel_grace_s, max_running=config.max_running_jobs)
        self.charts = ChartRenderer()
        # reading results and drawing charts take seconds: off the server's event loop, a few at a time
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="workbench-lab")
        self._whitelist: dict[str, CommandSpec] | None = None
        self._lock = threading.Lock()

    def whitelist(self) -> dict[str, CommandSpec]:
        """The commands the panel may start (model and corpus names read from the registries once)."""
        with self._lock:
            if self._whitelist is None:
                self._whitelist = whitelist(*registry_choices())
            return self._whitelist

    def run_state(self, run: str) -> tuple[str, dict | None]:
        """(status, progress) of a run, also for a job's run whose folder its command has not made yet."""
        try:
            return self.index.status(run)
        except NotFound:
            job = next((j for j in self.jobs.jobs() if j.run == run), None)
            if job is None:
                raise
            status = {"running": "running", "cancelled": "interrupted", "failed": "failed"}.get(job.status)
            return status or "unreadable", None
