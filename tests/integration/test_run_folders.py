"""Refused or crashed commands and run folders, end to end: a refusal writes nothing, a killed run reads
`interrupted`, SIGTERM during `transcoder train` leaves a checkpoint that --resume continues from."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from workbench.cli import main
from workbench.errors import WorkbenchError
from workbench.runs import HEARTBEAT, RunFolder, list_runs, read_run, run_status
from workbench.store.lock import StoreLock

CAPTURE = ["capture", "--model", "tiny-relu", "--hooks", "blocks.0.mlp.hook_post", "--context", "32"]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "workbench.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | (env or {}),
    )


@pytest.fixture(scope="module")
def captured(tmp_path_factory) -> Path:
    """A complete capture run folder."""
    out = tmp_path_factory.mktemp("captured") / "cap"
    assert main([*CAPTURE, "--tokens", "256", "--out", str(out)]) == 0
    assert run_status(out) == "complete"
    return out


def test_a_refused_capture_leaves_the_folder_byte_identical(captured, monkeypatch, capsys):
    before = snapshot(captured)
    assert main([*CAPTURE, "--tokens", "256", "--out", str(captured)]) == 2  # no --resume: refused
    assert re.search(r"holds a store with 256 of 256 tokens \(complete\).*--resume", capsys.readouterr().err)
    assert snapshot(captured) == before

    # a second writer refused by the store's lock (held here as a writer on another machine would hold it)
    lock = StoreLock.acquire(captured / "store")
    try:
        before = snapshot(captured)
        assert main([*CAPTURE, "--tokens", "256", "--out", str(captured), "--resume"]) == 2
        assert "open in another writer" in capsys.readouterr().err
        assert snapshot(captured) == before
    finally:
        lock.release()
    assert read_run(captured).manifest["command"].endswith(f"--tokens 256 --out {captured}")


def test_a_refused_report_include_leaves_no_orphan_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    with RunFolder.create(tmp_path / "good", "test", "workbench test") as run:
        run.save([])
    killed = tmp_path / "killed"  # as a SIGKILLed run leaves it: running, its process gone
    killed.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    manifest = {"format": "workbench-run/1", "command": "workbench capture", "status": "running"}
    (killed / "manifest.json").write_text(
        json.dumps(manifest | {"pid": gone.pid, "host": socket.gethostname()})
    )
    (killed / HEARTBEAT).write_text(json.dumps({"pid": gone.pid, "time": time.time(), "interval_s": 5}))
    args = ["report", "--model", "tiny-relu", "--tokens", "64", "--context", "16"]
    for include, why in ((killed, "status 'interrupted'"), (tmp_path / "nowhere", "not a run folder")):
        assert main([*args, "--include", str(tmp_path / "good"), str(include)]) == 2
        assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []
        assert why in capsys.readouterr().err
        assert main([*args, "--out", str(tmp_path / "mine"), "--include", str(include)]) == 2
        assert not (tmp_path / "mine").exists()
        assert why in capsys.readouterr().err


def test_a_run_killed_with_sigkill_reads_interrupted_and_resumes(tmp_path, capsys):
    out = tmp_path / "cap"
    args = [*CAPTURE, "--tokens", "1024", "--out", str(out)]
    victim = cli(*args, env={"WORKBENCH_HEARTBEAT_S": "0.2"})
    wait_for(lambda: (out / HEARTBEAT).is_file() or victim.poll() is not None, 300, "the first heartbeat")
    assert victim.poll() is None and run_status(out) == "running"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert json.loads((out / "manifest.json").read_text())["status"] == "running"  # as the kill left it
    assert run_status(out) == "interrupted"  # at once: its pid is gone
    assert [row["status"] for row in list_runs(tmp_path)] == ["interrupted"]
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps(manifest | {"host": "another-host"}))  # pid unknowable
    wait_for(lambda: run_status(out) == "interrupted", 60, "the heartbeat to go stale")  # 12 x 0.2 s
    with pytest.raises(WorkbenchError, match=r"status 'interrupted'.*--resume"):
        read_run(out)
    assert main([*args, "--resume"]) == 0
    assert run_status(out) == "complete" and read_run(out).find("capture").tokens == 1024


def test_sigterm_during_transcoder_train_saves_a_checkpoint_that_resume_continues(tmp_path, monkeypatch):
    from workbench.transcoders.train import Trainer

    out, batch = tmp_path / "tc", 64
    args = ["transcoder", "train", "--model", "tiny-relu", "--layer", "1", "--width", "64", "--k", "8"]
    args += ["--context", "32", "--batch-tokens", str(batch), "--checkpoint-every", "100000"]
    args += ["--out", str(out)]
    proc = cli(*args, "--tokens", str(400 * batch))
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(lambda: proc.stderr.read(1), "")), daemon=True)
    reader.start()

    def steps() -> int:
        done = re.findall(r"train transcoder:.*?\|\s*(\d+)/400", "".join(seen))
        return int(done[-1]) if done else 0

    wait_for(lambda: steps() >= 3 or proc.poll() is not None, 600, "training progress")
    assert proc.poll() is None, "".join(seen)
    assert not (out / "checkpoint").exists()  # no periodic checkpoint is due in this run
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 128 + signal.SIGTERM
    reader.join(timeout=60)
    err = "".join(seen)
    assert re.search(r"stopped by SIGTERM at step \d+ of 400: checkpoint saved in .*--resume", err), err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["error"].startswith("TrainingInterrupted")
    assert run_status(out) == "interrupted" and not (out / HEARTBEAT).exists()
    stopped_at = json.loads((out / "checkpoint" / "state.json").read_text())["state"]["step"]
    assert stopped_at >= 3

    taken = []  # count the steps the resumed run takes: a fresh start would take stopped_at + 5
    real_step = Trainer.step
    monkeypatch.setattr(Trainer, "step", lambda self, b: (taken.append(1), real_step(self, b))[1])
    assert main([*args, "--tokens", str((stopped_at + 5) * batch), "--resume"]) == 0
    assert len(taken) == 5
    record = read_run(out).find("transcoder_train")
    assert record.steps == stopped_at + 5 and run_status(out) == "complete"
