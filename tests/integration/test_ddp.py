"""Transcoder training with DDP over 2 gloo processes on the CPU (`workbench.scale.ddp.launch`).

- On the same global batches (each process its half), 2 processes take the steps 1 process takes:
  every weight equal to 2e-5 after 30 steps (float sums in another order; relu with resampling, topk);
  one lift of dead features equals 1 process's.
- A 2-process run stopped after a checkpoint and resumed ends where an uninterrupted one does, and a
  checkpoint of 2 processes refuses to resume with 1.
- `workbench transcoder train --nproc 2` on the model's own windows (each process its share of the
  windows, so other tokens in each batch), stopped by SIGTERM after a checkpoint and resumed with
  `--resume` (one process refuses that checkpoint), reaches 1 process's loss curve: within 0.05 FVU
  at every logged step (each logged FVU is one batch of 512 tokens; measured differences 0.004 to
  0.036 as the FVU falls from 0.94 to 0.42).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from workbench.cli import main
from workbench.errors import WorkbenchError
from workbench.scale.ddp import launch
from workbench.transcoders.data import Batch
from workbench.transcoders.distributed import DistributedTrainer
from workbench.transcoders.model import Transcoder, TranscoderConfig
from workbench.transcoders.train import TrainConfig, Trainer

D, BATCH = 16, 256


def global_batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Global batch i of a synthetic sparse code: y = Σ_j ReLU(x·e_j − 1.5) e_j (seeded by i)."""
    g = torch.Generator().manual_seed(1000 + i)
    e = torch.randn(64, D, generator=torch.Generator().manual_seed(0))
    e = e / e.norm(dim=1, keepdim=True)
    x = torch.randn(BATCH, D, generator=g) * 1.5
    return x, torch.relu(x @ e.T - 1.5) @ e


def stream(rank: int, world: int, start: int = 0, stop_at: int | None = None):
    """This process's rows of every global batch from `start`; KeyboardInterrupt at batch `stop_at`."""
    share = BATCH // world
    i = start
    while True:
        if i == stop_at:
            raise KeyboardInterrupt  # a run killed mid-way: its last checkpoint is what survives
        x, y = global_batch(i)
        yield Batch(x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share], i + 1)
        i += 1


CONFIGS = {
    "relu": (
        TranscoderConfig(D, D, 64, "relu"),
        dict(remedy="resample", resample_every=10, dead_tokens=BATCH * 3),
    ),
    "topk": (TranscoderConfig(D, D, 64, "topk", k=4), dict(remedy="none")),
}


def make_transcoder(arch: str) -> Transcoder:
    """Seeded; for relu, 8 features start with a zero encoder column: they never fire, so are resampled."""
    tc = Transcoder(CONFIGS[arch][0], seed=0)
    if arch == "relu":
        with torch.no_grad():
            tc.W_enc[:, :8] = 0
    return tc


def train_config(extra: dict, **more) -> TrainConfig:
    return TrainConfig(tokens=BATCH * 30, batch_size=BATCH, warmup_steps=5, **(extra | more))


def ddp_run(comm, arch: str, out: str | None = None, stop_at: int | None = None, resume: bool = False):
    """One process of a 2-process run (module-level: the launched processes import it)."""
    trainer = DistributedTrainer(
        make_transcoder(arch), train_config(CONFIGS[arch][1], checkpoint_every=12), out and Path(out), comm
    )
    if resume:
        trainer.load(Path(out) / "checkpoint")
    trainer.run(stream(comm.rank, comm.world, trainer.state.cursor, stop_at), progress=False)
    return {k: v.clone() for k, v in trainer.tc.state_dict().items()} | {"curve": trainer.state.curve}


@pytest.mark.parametrize("arch", ["relu", "topk"])
def test_two_processes_take_the_steps_of_one(arch):
    one = Trainer(make_transcoder(arch), train_config(CONFIGS[arch][1]))
    resampled = []
    one.resample = lambda *a, f=one.resample: (resampled.append(one.state.step), f(*a))
    one.run(stream(0, 1), progress=False)
    two = launch(2, ddp_run, (arch,))
    for name, value in one.tc.state_dict().items():
        torch.testing.assert_close(two[name], value, rtol=0, atol=2e-5, msg=name)
    for a, b in zip(one.state.curve, two["curve"], strict=True):
        assert (a["step"], a["tokens"]) == (b["step"], b["tokens"])
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5) and b["l0"] == pytest.approx(a["l0"], abs=1e-4)
    assert resampled == ([10] if arch == "relu" else [])  # relu: the dead 8, from the global batch


def lift_run(comm):
    """One process's lift of 8 dead features on its half of global batch 0: the new encoder biases."""
    tc = Transcoder(CONFIGS["topk"][0], seed=0)
    trainer = DistributedTrainer(tc, train_config({}), None, comm)
    share = BATCH // comm.world
    x = global_batch(0)[0][comm.rank * share : (comm.rank + 1) * share]
    dead = torch.arange(64) < 8
    with torch.no_grad():
        trainer.lift(x, tc.encode(x).values, dead)
    return tc.b_enc.detach().clone()


def test_two_processes_lift_as_one():
    """The lift remedy takes each dead feature's smallest gap over the global batch (a min all-reduce),
    so 2 processes lift every bias as 1 process does on the whole batch. (Tested on one lift: over many
    steps a lifted feature sits just past a threshold, where float rounding can flip it.)"""
    tc = Transcoder(CONFIGS["topk"][0], seed=0)
    start = tc.b_enc.detach().clone()
    x = global_batch(0)[0]
    with torch.no_grad():
        Trainer(tc, train_config({})).lift(x, tc.encode(x).values, torch.arange(64) < 8)
    assert (tc.b_enc.detach()[:8] > start[:8]).all() and torch.equal(tc.b_enc.detach()[8:], start[8:])
    torch.testing.assert_close(launch(2, lift_run, ()), tc.b_enc.detach(), rtol=0, atol=1e-6)


def test_a_stopped_two_process_run_resumes_where_it_was(tmp_path):
    straight = launch(2, ddp_run, ("topk",))
    with pytest.raises(KeyboardInterrupt):
        launch(2, ddp_run, ("topk", str(tmp_path), 17))
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())["state"]
    assert (state["step"], state["world_size"], state["cursors"]) == (12, 2, [12, 12])
    resumed = launch(2, ddp_run, ("topk", str(tmp_path), None, True))
    for name, value in straight.items():
        if name != "curve":
            torch.testing.assert_close(resumed[name], value, rtol=0, atol=1e-6, msg=name)
    cfg, extra = CONFIGS["topk"]
    single = Trainer(Transcoder(cfg, seed=0), train_config(extra), tmp_path)
    with pytest.raises(WorkbenchError, match="--nproc 2"):  # its data cursors are those of 2 processes
        single.load(tmp_path / "checkpoint")


TRAIN = ["transcoder", "train", "--model", "tiny-relu", "--layer", "1", "--width", "512", "--k", "16"]
TRAIN += ["--tokens", "40960", "--batch-tokens", "512", "--context", "64", "--json"]


def _curve(out: Path) -> list[dict]:
    run = json.loads((out / "results.json").read_text())
    return next(r for r in run["results"] if r["kind"] == "transcoder_train")["curve"]


def test_the_cli_with_two_processes_stops_resumes_and_reaches_the_one_process_curve(tmp_path, capsys):
    assert main(TRAIN + ["--out", str(tmp_path / "one")]) == 0
    one = _curve(tmp_path / "one")

    # SIGTERM to the launcher: the processes agree on a step, save a checkpoint and stop
    out = tmp_path / "two"
    cmd = [
        sys.executable,
        "-m",
        "workbench",
        *TRAIN,
        "--out",
        str(out),
        "--nproc",
        "2",
        "--checkpoint-every",
        "10",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out / "checkpoint" / "state.json").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err
    state = json.loads((out / "checkpoint" / "state.json").read_text())["state"]
    assert 10 <= state["step"] < 80 and state["world_size"] == 2 and len(state["cursors"]) == 2, state

    capsys.readouterr()
    assert main(TRAIN + ["--out", str(out), "--resume"]) == 2  # one process cannot take on two's cursors
    assert "--nproc 2" in capsys.readouterr().err
    assert main(TRAIN + ["--out", str(out), "--nproc", "2", "--resume"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == 40960
    assert (out / "transcoder" / "weights.safetensors").is_file()
    two = _curve(out)
    assert [c["step"] for c in one] == [c["step"] for c in two] == list(range(20, 81, 20))
    for a, b in zip(one, two, strict=True):
        assert abs(a["fvu"] - b["fvu"]) < 0.05, (a, b)
