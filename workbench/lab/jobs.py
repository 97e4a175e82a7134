"""Jobs: whitelisted workbench commands the server starts as its own background processes.

A job is `python -m workbench <command> ... --out <runs root>/<new folder>`, started from an argv list
(no shell) in a new session, its stdin closed and its output in `<runs root>/.jobs/<job id>.log` (not in
the run folder: a command refuses to write a run into a folder that already holds other files). A job
is cancelled as a person at a terminal would stop it: SIGINT to its process group (the command closes its
run folder as "interrupted"), then SIGTERM and at last SIGKILL, each after `grace_s` seconds if it is
still running. Jobs live as long as the server that started them knows them; their run folders say the
rest.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from workbench.lab.paths import run_id

LOGS = ".jobs"  # under the runs root; hidden folders are not run folders


class JobRefused(RuntimeError):
    """The server will not start another job now (HTTP 409)."""


@dataclass
class Job:
    id: str
    command: str
    argv: list[str]
    run: str
    folder: Path
    log: Path
    started: str
    process: subprocess.Popen
    cancelled: bool = False
    _timers: list[threading.Timer] = field(default_factory=list, repr=False)

    @property
    def returncode(self) -> int | None:
        return self.process.poll()  # also reaps a finished process

    @property
    def status(self) -> str:
        code = self.returncode
        if code is None:
            return "running"
        if code == 0:
            return "complete"
        return "cancelled" if self.cancelled else "failed"

    def error(self) -> str | None:
        """A failed job's own word on why: its last line starting with 'error:', else its last line."""
        if self.status != "failed":
            return None
        try:
            tail = self.log.read_bytes()[-8192:].decode("utf-8", "replace")
        except OSError:
            return None
        lines = [line.strip() for line in tail.replace("\r", "\n").splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error:")]
        return (errors or lines or [f"exited with code {self.returncode}"])[-1]

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "command": self.command,
            "argv": list(self.argv),
            "run": self.run,
            "status": self.status,
            "started": self.started,
            "pid": self.process.pid,
            "returncode": self.returncode,
            "error": self.error(),
        }


class JobManager:
    """The jobs this server started, under one runs root."""

    def __init__(self, root: Path, grace_s: float = 10.0, max_running: int = 4) -> None:
        self.root, self.grace_s, self.max_running = root, grace_s, max_running
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def jobs(self) -> list[Job]:
        return list(self._jobs.values())

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def start(self, command: str, label: str, arguments: Sequence[str]) -> Job:
        """Start `python -m workbench *arguments --out <new run folder>` as a job; JobRefused when
        max_running jobs are running already."""
        with self._lock:
            running = sum(job.status == "running" for job in self._jobs.values())
            if running >= self.max_running:
                raise JobRefused(
                    f"{running} jobs are running, the most this server starts at once "
                    "(WorkbenchLab.max_running_jobs); wait for one to finish or cancel one"
                )
            job_id = uuid.uuid4().hex[:12]
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            folder = self.root / f"{stamp}-{label}-{job_id[:6]}"
            argv = [sys.executable, "-m", "workbench", *arguments, "--out", str(folder)]
            logs = self.root / LOGS
            logs.mkdir(parents=True, exist_ok=True)
            log = logs / f"{job_id}.log"
            env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONSAFEPATH": "1"}
            with open(log, "wb") as out:
                process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self.root,
                    env=env,
                    start_new_session=True,  # its own process group: signals reach the command's children
                )
            started = datetime.now(timezone.utc).isoformat(timespec="seconds")
            job = Job(job_id, command, argv, run_id(self.root, folder), folder, log, started, process)
            self._jobs[job_id] = job
            return job

    def cancel(self, job: Job) -> None:
        """SIGINT now, then SIGTERM and SIGKILL each `grace_s` later while the job still runs."""
        if job.returncode is not None:
            return
        job.cancelled = True
        self._signal(job, signal.SIGINT)
        later = [(self.grace_s, signal.SIGTERM), (2 * self.grace_s, signal.SIGKILL)]
        for delay, sig in later:
            timer = threading.Timer(delay, self._signal, (job, sig))
            timer.daemon = True
            timer.start()
            job._timers.append(timer)

    @staticmethod
    def _signal(job: Job, sig: signal.Signals) -> None:
        if job.returncode is not None:  # finished: its pid may belong to another process by now
            for timer in job._timers:
                timer.cancel()
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if hasattr(os, "killpg"):
                os.killpg(job.process.pid, sig)
            else:  # no process groups (Windows): the command itself
                job.process.send_signal(sig)
