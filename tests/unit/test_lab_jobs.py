"""Jobs: argv lists run without a shell, a bounded number at once, cancelled SIGINT first, SIGTERM after."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest

from workbench.lab.jobs import Job, JobManager, JobRefused

# A process that ignores SIGINT (as a stuck command would) and says when it is ready.
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); print('ready', flush=True); "
    "time.sleep(60)"
)


def job_of(manager: JobManager, code: str, tmp_path) -> Job:
    """A job running `python -c code` in its own session, as JobManager.start runs commands."""
    log = tmp_path / "job.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    started = datetime.now(timezone.utc).isoformat()
    job = Job("0123456789ab", "test", [sys.executable, "-c", code], "run", tmp_path, log, started, process)
    manager._jobs[job.id] = job
    deadline = time.monotonic() + 30
    while b"ready" not in log.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.05)
    return job


def wait(job: Job, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while job.status == "running" and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_cancelled_job_that_ignores_sigint_gets_sigterm_after_the_grace(tmp_path):
    manager = JobManager(tmp_path, grace_s=0.5)
    job = job_of(manager, STUBBORN, tmp_path)
    began = time.monotonic()
    manager.cancel(job)
    time.sleep(0.2)
    assert job.status == "running"  # SIGINT was ignored
    wait(job)
    assert job.status == "cancelled" and job.returncode == -15  # SIGTERM
    assert time.monotonic() - began >= 0.5
    assert job.to_dict()["status"] == "cancelled" and job.error() is None


def test_a_job_that_obeys_sigint_stops_at_once(tmp_path):
    manager = JobManager(tmp_path, grace_s=30)
    job = job_of(manager, "import time; print('ready', flush=True); time.sleep(60)", tmp_path)
    manager.cancel(job)
    wait(job, timeout=10)
    assert job.status == "cancelled" and job.returncode == -2  # ended by the SIGINT itself
    manager.cancel(job)  # a stopped job: nothing happens


def test_a_failed_job_says_why(tmp_path):
    manager = JobManager(tmp_path)
    job = job_of(
        manager,
        "print('ready'); print('loading...'); print('error: no such thing'); raise SystemExit(2)",
        tmp_path,
    )
    wait(job)
    assert job.status == "failed" and job.returncode == 2
    assert job.to_dict()["error"] == "error: no such thing"


def test_the_number_of_running_jobs_is_bounded(tmp_path):
    manager = JobManager(tmp_path, grace_s=0.2, max_running=1)
    job = job_of(manager, STUBBORN, tmp_path)
    with pytest.raises(JobRefused, match="1 jobs are running"):
        manager.start("evaluate", "evaluate", ["evaluate"])
    manager.cancel(job)
    wait(job)
    assert not (tmp_path / ".jobs").exists()


def test_a_job_runs_the_workbench_module_with_its_argv_list_and_a_log(tmp_path):
    manager = JobManager(tmp_path / "runs")
    job = manager.start(
        "evaluate", "evaluate", ["evaluate", "--model=no-such-model; echo pwned", "--tokens=8"]
    )
    wait(job, timeout=120)
    assert job.argv[:4] == [sys.executable, "-m", "workbench", "evaluate"]
    assert job.argv[-2:] == ["--out", str(job.folder)] and job.folder.parent == tmp_path / "runs"
    assert job.folder.name.endswith(f"-evaluate-{job.id[:6]}")
    log = job.log.read_text()
    assert job.status == "failed" and "pwned" not in log.replace("no-such-model; echo pwned", "")
    assert "no-such-model; echo pwned" in job.error()  # the whole value reached the command as one argument
    assert job.log.parent == tmp_path / "runs" / ".jobs"
