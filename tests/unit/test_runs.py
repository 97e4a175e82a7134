"""Run folders: pid, host and heartbeat; `interrupted` for a dead or silent run; refusals write nothing;
SIGINT/SIGTERM during transcoder training save a checkpoint that resumes like an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from workbench.errors import WorkbenchError
from workbench.runs import HEARTBEAT, STALE_BEATS, RunFolder, list_runs, read_run, run_status
from workbench.transcoders.data import Batch
from workbench.transcoders.model import Transcoder, TranscoderConfig
from workbench.transcoders.train import TrainConfig, Trainer, TrainingInterrupted


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def wait_for(condition, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def write_running(folder: Path, pid: int, host: str, beat_age: float | None, interval: float = 1.0) -> None:
    """A manifest that says running, as a process `pid` on `host` left it, heartbeat `beat_age` s old."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"format": "workbench-run/1", "command": "workbench x", "status": "running", "created": "t"}
    manifest |= {"pid": pid, "host": host, "heartbeat_s": interval}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    if beat_age is not None:
        beat = {"pid": pid, "host": host, "time": time.time() - beat_age, "interval_s": interval}
        (folder / HEARTBEAT).write_text(json.dumps(beat))


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_run_records_its_process_and_keeps_a_heartbeat(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_HEARTBEAT_S", "0.05")
    run = RunFolder.create(tmp_path / "run", "test", "workbench test")
    manifest = json.loads((run.path / "manifest.json").read_text())
    assert manifest["status"] == "running" and manifest["heartbeat_s"] == 0.05
    assert (manifest["pid"], manifest["host"]) == (os.getpid(), socket.gethostname())
    first = json.loads((run.path / HEARTBEAT).read_text())
    assert (first["pid"], first["host"]) == (os.getpid(), socket.gethostname())
    wait_for(lambda: json.loads((run.path / HEARTBEAT).read_text())["time"] > first["time"], what="a beat")
    assert run_status(run.path) == "running"
    assert list_runs(tmp_path)[0]["status"] == "running"
    run.save([])
    assert run_status(run.path) == "complete" and not (run.path / HEARTBEAT).exists()
    assert sorted(p.name for p in run.path.iterdir()) == ["manifest.json", "results.json"]
    assert read_run(run.path).results == []


def test_a_gone_or_silent_run_reads_interrupted(tmp_path):
    here = socket.gethostname()
    cases = {
        "dead-pid": (dead_pid(), here, 0.0, "interrupted"),  # killed: its pid is gone, however fresh the beat
        "alive-but-silent": (os.getpid(), here, STALE_BEATS * 1.0 + 5, "interrupted"),  # hung, or pid reused
        "alive": (os.getpid(), here, 0.0, "running"),
        "elsewhere-beating": (1, "another-host", 0.5, "running"),  # another host: the heartbeat decides
        "elsewhere-silent": (1, "another-host", STALE_BEATS * 1.0 + 5, "interrupted"),
        "no-heartbeat": (os.getpid(), here, None, "interrupted"),
    }
    for name, (pid, host, age, _) in cases.items():
        write_running(tmp_path / name, pid, host, age)
    for name, (_, _, _, expected) in cases.items():
        assert run_status(tmp_path / name) == expected, name
    assert {row["path"]: row["status"] for row in list_runs(tmp_path)} == {
        str(tmp_path / name): expected for name, (*_, expected) in cases.items()
    }
    with pytest.raises(WorkbenchError, match=r"incomplete \(status 'interrupted'\).*--resume"):
        read_run(tmp_path / "dead-pid")
    legacy = tmp_path / "legacy"  # written before runs recorded their process: it cannot be judged
    legacy.mkdir()
    (legacy / "manifest.json").write_text(json.dumps({"status": "running", "command": "old"}))
    assert run_status(legacy) == "running"


@pytest.mark.parametrize(
    ("error", "status"), [(ValueError("boom"), "failed"), (KeyboardInterrupt(), "interrupted")]
)
def test_an_exception_marks_the_run_and_stops_the_heartbeat(tmp_path, error, status):
    with pytest.raises(type(error)), RunFolder.create(tmp_path / "run", "test", "workbench test"):
        raise error
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == status and manifest["error"].startswith(type(error).__name__)
    assert run_status(tmp_path / "run") == status and not (tmp_path / "run" / HEARTBEAT).exists()


def test_a_command_refused_before_it_begins_leaves_an_existing_folder_as_it_was(tmp_path):
    with RunFolder.create(tmp_path / "run", "test", "workbench first") as run:
        run.save([])
    before = snapshot(tmp_path / "run")
    second = RunFolder.create(tmp_path / "run", "test", "workbench second")
    with pytest.raises(WorkbenchError, match="refused"), second:
        raise WorkbenchError("refused by the command's own checks")
    assert snapshot(tmp_path / "run") == before
    with RunFolder.create(tmp_path / "run", "test", "workbench third") as run:  # begun: rewritten
        run.begin()
        assert json.loads((run.path / "manifest.json").read_text())["command"] == "workbench third"
        run.save([])
    # a RunFolder this process left unfinished (a notebook cell that raised) does not block the next one
    RunFolder.create(tmp_path / "fresh", "test", "workbench left")
    with RunFolder.create(tmp_path / "fresh", "test", "workbench again") as run:
        run.save([])
    assert run_status(tmp_path / "fresh") == "complete"


HOLDER = """
import sys, time
from workbench.runs import RunFolder
run = RunFolder.create(sys.argv[1], "holder", "workbench holder")
if sys.argv[2] == "begin":
    run.begin()
print("ready", flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("begin", [False, True])
def test_a_run_folder_in_use_by_another_process_is_refused_untouched(tmp_path, begin):
    """Held only (folder lock), or held and running (pid and heartbeat): refused, nothing written."""
    with RunFolder.create(tmp_path / "run", "test", "workbench first") as run:
        run.save([])
    env = os.environ | {"WORKBENCH_HEARTBEAT_S": "60"}  # no beat lands while the folder is compared
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "run"), "begin" if begin else "hold"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        before = snapshot(tmp_path / "run")
        assert run_status(tmp_path / "run") == ("running" if begin else "complete")
        refused = r"--out .*run is in use by another running workbench command"
        with pytest.raises(WorkbenchError, match=refused + (rf" \(pid {holder.pid} on " if begin else "")):
            RunFolder.create(tmp_path / "run", "test", "workbench second")
        assert snapshot(tmp_path / "run") == before
    finally:
        holder.kill()
        holder.wait()
    assert run_status(tmp_path / "run") == ("interrupted" if begin else "complete")
    with RunFolder.create(tmp_path / "run", "test", "workbench third") as run:  # free once the holder died
        run.save([])


def _pairs(start: int = 0, send: tuple[int, int] | None = None):
    """Endless synthetic (x, y) batches; `send` = (batch index, signal) signals this process there."""
    g = torch.Generator().manual_seed(0)
    enc, dec = torch.randn(8, 32, generator=g), torch.randn(32, 8, generator=g)
    cursor = start
    while True:
        if send is not None and cursor == send[0]:
            os.kill(os.getpid(), send[1])
        x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1000 + cursor))
        cursor += 1
        yield Batch(x, torch.relu(x @ enc - 1) @ dec, cursor)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_training_saves_a_checkpoint_that_resumes_exactly(tmp_path, signum):
    cfg = TranscoderConfig(8, 8, 32, "topk", k=4)
    train = TrainConfig(tokens=64 * 30, batch_size=64, checkpoint_every=1000, warmup_steps=3)
    straight = Transcoder(cfg, seed=0)
    Trainer(straight, train).run(_pairs(), progress=False)

    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    first = Trainer(Transcoder(cfg, seed=0), train, tmp_path)
    with pytest.raises(TrainingInterrupted, match=r"stopped by SIG\w+ at step 12 of 30.*--resume") as stopped:
        first.run(_pairs(send=(11, signum)), progress=False)  # the signal lands while batch 11 is made
    assert stopped.value.exit_code == 128 + signum
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # restored
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())["state"]
    assert state["step"] == 12  # no periodic checkpoint was due: this one is the signal's

    resumed = Trainer(Transcoder(cfg, seed=0), train, tmp_path)
    resumed.load(tmp_path / "checkpoint")
    resumed.run(_pairs(resumed.state.cursor), progress=False)
    assert resumed.state.step == 30
    for name, value in straight.state_dict().items():
        assert torch.allclose(value, resumed.tc.state_dict()[name], atol=1e-6), name
