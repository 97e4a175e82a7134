"""progress.json: bars report to the run folder they run in (and to nothing outside one), throttled on a
fake clock, written atomically, nested bars summed, the training loss curve thinned; real commands end
with done == total."""

from __future__ import annotations

import ast
import contextvars
import json
import os
import threading
from datetime import datetime
from pathlib import Path

import pytest
import torch

from workbench.cli import main
from workbench.corpus import load_corpus, make_windows
from workbench.errors import WorkbenchError
from workbench.evaluate import evaluate
from workbench.progress import Bar, current_listener, listening, tracked
from workbench.progress_file import PROGRESS, ProgressFile, ThinnedCurve
from workbench.runs import RunFolder, write_json
from workbench.transcoders.data import Batch
from workbench.transcoders.model import Transcoder, TranscoderConfig
from workbench.transcoders.train import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[2]


class Clock:
    """A fake monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """A writer that keeps every state instead of writing it."""

    def __init__(self) -> None:
        self.states: list[dict] = []

    def __call__(self, path: Path, state: dict) -> None:
        json.dumps(state, allow_nan=False)  # what write_json would refuse
        self.states.append(state)


def listener(tmp_path: Path, clock: Clock, writing: bool = True, **kw) -> tuple[ProgressFile, Recorder]:
    recorder = Recorder()
    return ProgressFile(tmp_path / PROGRESS, recorder, clock=clock, writing=writing, **kw), recorder


def test_updates_are_throttled_to_one_write_per_interval_and_ends_are_always_written(tmp_path):
    clock = Clock()
    progress, written = listener(tmp_path, clock)
    with listening(progress):
        bar = Bar(1000, unit="tokens", desc="evaluate m", show=False)
        assert [s["done"] for s in written.states] == [0]  # the first report is written at once
        for _ in range(9):  # 0.5 s apart: every other one may be written
            clock.now += 0.5
            bar.update(100)
        assert [s["done"] for s in written.states] == [0, 200, 400, 600, 800]
        clock.now += 0.1
        bar.update(100)  # done, but only 0.1 s after the last write: held back ...
        assert written.states[-1]["done"] == 800
        bar.close()  # ... until the phase ends, which is always written
    last = written.states[-1]
    assert (last["done"], last["total"], last["unit"], last["phase"]) == (1000, 1000, "tokens", "evaluate m")
    assert last["rate"] == pytest.approx(1000 / 4.6, rel=1e-4) and last["eta_s"] == 0
    assert last["elapsed_s"] == 4.6 and last["curve"] is None
    assert datetime.fromisoformat(last["updated"]).tzinfo is not None
    middle = written.states[2]  # 400 of 1000 tokens after 2 s: 200 tokens/s, 3 s to go
    assert (middle["rate"], middle["eta_s"], middle["elapsed_s"]) == (200, 3, 2)
    assert current_listener() is None  # the scope ended


def test_nothing_is_written_before_the_run_begins_then_the_state_so_far_at_once(tmp_path):
    clock = Clock()
    progress, written = listener(tmp_path, clock, writing=False)
    with listening(progress):
        bar = Bar(10, unit="steps", desc="train", show=False, initial=4)  # a resumed run: 4 done before
        clock.now += 2
        bar.update(2)
        assert written.states == []
        progress.begin()
        assert written.states[-1]["done"] == 6 and written.states[-1]["rate"] == 1  # 2 new steps in 2 s
        progress.finish(complete=False)  # a failed run keeps where it stopped
        assert written.states[-1]["done"] == 6 and written.states[-1]["total"] == 10
        bar.update(1)  # after the end: not heard
    assert written.states[-1]["done"] == 6


def test_a_complete_run_ends_with_done_equal_to_total(tmp_path):
    clock = Clock()
    progress, written = listener(tmp_path, clock)
    with listening(progress):
        bar = Bar(None, unit="windows", desc="unknown total", show=False)
        bar.update(3)
        progress.finish(complete=True)
    assert (written.states[-1]["done"], written.states[-1]["total"]) == (3, 3)
    progress, written = listener(tmp_path, clock)
    with listening(progress):
        bar = Bar(10, unit="tokens", desc="stopped early", show=False)  # e.g. a loop that broke off
        bar.update(7)
        progress.finish(complete=True)
    assert (written.states[-1]["done"], written.states[-1]["total"], written.states[-1]["eta_s"]) == (
        10,
        10,
        0,
    )


def test_nested_bars_count_the_inner_share_and_name_both(tmp_path):
    clock = Clock()
    progress, written = listener(tmp_path, clock, interval=0.0)
    with listening(progress):
        sweep = Bar(4, unit="levels", desc="essential sweep", show=False)
        for level in range(2):
            clock.now += 1
            with Bar(100, unit="tokens", desc="evaluate m", show=False) as inner:
                inner.update(25)
                state = written.states[-1]
                assert state["phase"] == "essential sweep: evaluate m" and state["unit"] == "levels"
                assert state["done"] == level + 0.25 and state["total"] == 4
            sweep.update(1)
        assert written.states[-1]["phase"] == "essential sweep" and written.states[-1]["done"] == 2
        assert written.states[-1]["rate"] == 1 and written.states[-1]["eta_s"] == 2  # 2 levels in 2 s
        sweep.set_total(2)  # fewer levels than the bound: finished
        sweep.close()
    assert (written.states[-1]["done"], written.states[-1]["total"]) == (2, 2)


def test_the_last_phase_stays_until_another_opens(tmp_path):
    clock = Clock()
    progress, written = listener(tmp_path, clock, interval=0.0)
    with listening(progress):
        for name, total in (("calibrate", 10), ("measure", 30)):
            with Bar(total, unit="tokens", desc=name, show=False) as bar:
                bar.update(total)
            clock.now += 5  # something untracked runs between phases
            assert written.states[-1]["phase"] == name and written.states[-1]["done"] == total
        list(tracked(range(3), unit="layers", desc="routers", show=False))
    assert [s["phase"] for s in written.states][-1] == "routers" and written.states[-1]["done"] == 3


def test_the_curve_is_thinned_to_a_bounded_number_of_evenly_spaced_points():
    curve = ThinnedCurve("loss", "tokens", limit=100)
    for step in range(10_000):
        curve.add(256 * (step + 1), 1.0 / (step + 1))
        assert len(curve.points) <= 100  # memory does not grow with the steps
    points = curve.to_dict()["points"]
    assert len(points) <= 101 and points[0] == [256, 1.0] and points[-1][0] == 256 * 10_000
    xs = [x for x, _ in points[:-1]]
    assert len({b - a for a, b in zip(xs, xs[1:], strict=False)}) == 1  # even spacing
    curve.add(0.0, float("nan"))  # a diverged loss is left out, never written as NaN
    assert curve.to_dict()["points"][-1][0] == 256 * 10_000


def test_progress_json_is_replaced_atomically(tmp_path):
    clock = Clock()
    path = tmp_path / PROGRESS
    progress = ProgressFile(path, write_json, clock=clock, writing=True, interval=0.0)
    with listening(progress), Bar(50, unit="tokens", desc="x", show=False) as bar:
        for _ in range(50):
            with path.open() as before:  # a reader holding the file open while the next state lands
                inode = os.fstat(before.fileno()).st_ino
                bar.update(1)
                bar.point(bar.done, 1.0)
                assert json.loads(before.read())["done"] == bar.done - 1  # still whole: never rewritten
            assert os.stat(path).st_ino != inode  # the new state came by rename
            assert json.loads(path.read_text())["done"] == bar.done
    assert [p.name for p in tmp_path.iterdir()] == [PROGRESS]  # no temporary file left behind


def test_bars_outside_a_run_folder_write_nothing(tmp_path, monkeypatch, gpt2_handle):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    assert current_listener() is None
    evaluate(gpt2_handle, small_windows(gpt2_handle), batch_size=4, progress=False)
    evaluate(gpt2_handle, small_windows(gpt2_handle), batch_size=4, progress=True)
    assert list(tmp_path.rglob("*")) == []


def test_a_bar_in_a_plain_thread_reports_to_no_one(tmp_path):
    """ContextVars do not pass into threads: work in a worker thread needs copy_context() to report."""
    progress, written = listener(tmp_path, Clock(), interval=0.0)

    def work():
        with Bar(5, unit="tokens", desc="in a thread", show=False) as bar:
            bar.update(5)

    with listening(progress):
        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
        assert written.states == []
        context = contextvars.copy_context()
        thread = threading.Thread(target=context.run, args=(work,))
        thread.start()
        thread.join()
    assert written.states[-1]["phase"] == "in a thread"


def small_windows(handle):
    return make_windows(load_corpus()[:4], handle.tokenizer, context=32, separator_id=0).select(32 * 8)


def test_progress_false_hides_the_bar_but_still_records_progress(tmp_path, gpt2_handle, capsys):
    windows = small_windows(gpt2_handle)
    with RunFolder.create(tmp_path / "run", "test", "workbench test") as run:
        result = evaluate(gpt2_handle, windows, batch_size=4, progress=False)
        run.save([result])
    assert "evaluate" not in capsys.readouterr().err  # no terminal bar
    state = json.loads((tmp_path / "run" / PROGRESS).read_text())
    assert state["done"] == state["total"] == windows.n_tokens and state["unit"] == "tokens"
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert PROGRESS in manifest["files"]


def test_a_failed_run_keeps_where_it_stopped(tmp_path):
    with pytest.raises(ValueError), RunFolder.create(tmp_path / "run", "test", "workbench test"):
        bar = Bar(100, unit="tokens", desc="work", show=False)
        bar.update(30)
        bar.update(10)  # held back by the throttle, written by the end of the run
        raise ValueError("boom")
    state = json.loads((tmp_path / "run" / PROGRESS).read_text())
    assert (state["done"], state["total"], state["phase"]) == (40, 100, "work")
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["status"] == "failed"


def test_a_refused_command_leaves_an_existing_folder_untouched_and_a_new_run_drops_old_progress(tmp_path):
    with RunFolder.create(tmp_path / "run", "test", "workbench first") as run:
        with Bar(10, unit="tokens", desc="first", show=False) as bar:
            bar.update(10)
        run.save([])
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    assert PROGRESS in before
    with pytest.raises(WorkbenchError), RunFolder.create(tmp_path / "run", "test", "workbench second"):
        with Bar(10, unit="tokens", desc="second", show=False) as bar:  # before begin(): not written
            bar.update(5)
        raise WorkbenchError("refused by the command's own checks")
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before
    with RunFolder.create(tmp_path / "run", "test", "workbench third") as run:
        run.begin()
        assert not (tmp_path / "run" / PROGRESS).exists()  # the first run's progress is not this one's


def test_training_reports_its_loss_curve_thinned(tmp_path):
    cfg = TranscoderConfig(8, 8, 32, "topk", k=4)
    trainer = Trainer(Transcoder(cfg, seed=0), TrainConfig(tokens=64 * 40, batch_size=64, warmup_steps=3))
    trainer.state.curve = [{"tokens": 0, "loss": 9.0}]  # as a resumed run's checkpoint holds it
    progress, written = listener(tmp_path, Clock(), max_points=8)
    with listening(progress):
        trainer.run(synthetic_pairs(), progress=False)
        progress.finish(complete=True)
    state = written.states[-1]
    assert (state["done"], state["total"], state["unit"]) == (40, 40, "steps")
    curve = state["curve"]
    assert (curve["name"], curve["x"]) == ("loss", "tokens")
    points = curve["points"]
    assert len(points) <= 9 and points[0] == [0, 9.0] and points[-1][0] == 64 * 40
    assert points[-1][1] == pytest.approx(trainer.state.last_loss, rel=1e-4)
    assert [x for x, _ in points] == sorted(x for x, _ in points)


def synthetic_pairs():
    g = torch.Generator().manual_seed(0)
    enc, dec = torch.randn(8, 32, generator=g), torch.randn(32, 8, generator=g)
    cursor = 0
    while True:
        x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1000 + cursor))
        cursor += 1
        yield Batch(x, torch.relu(x @ enc - 1) @ dec, cursor)


def read_progress(folder: Path) -> dict:
    state = json.loads((folder / PROGRESS).read_text())
    assert set(state) == {"phase", "done", "total", "unit", "rate", "eta_s", "elapsed_s", "updated", "curve"}
    assert state["elapsed_s"] >= 0 and datetime.fromisoformat(state["updated"])
    return state


def test_evaluate_command_leaves_progress_json_with_done_equal_to_total(tmp_path, capsys):
    assert main(["evaluate", "--model", "tiny-relu", "--tokens", "2048", "--out", str(tmp_path / "ev")]) == 0
    state = read_progress(tmp_path / "ev")
    assert (state["phase"], state["unit"]) == ("evaluate tiny-relu", "tokens")
    assert state["done"] == state["total"] == 2048 and state["rate"] > 0 and state["eta_s"] == 0
    assert state["curve"] is None


def test_transcoder_train_command_records_steps_and_the_loss_curve(tmp_path, capsys):
    argv = ["transcoder", "train", "--model", "tiny-relu", "--tokens", "4096", "--width", "512", "--k", "16"]
    assert main([*argv, "--batch-tokens", "256", "--out", str(tmp_path / "tc"), "--json"]) == 0
    state = read_progress(tmp_path / "tc")
    assert (state["phase"], state["unit"], state["done"], state["total"]) == (
        "train transcoder",
        "steps",
        16,
        16,
    )
    points = state["curve"]["points"]
    assert [x for x, _ in points] == [256 * (i + 1) for i in range(16)]  # every step, few enough to keep
    assert all(0 < y < 10 for _, y in points)


def test_only_the_progress_module_draws_tqdm_bars():
    """Cores make `workbench.progress.Bar`s, so that every bar also reaches progress.json."""
    offenders = []
    for top in ("workbench", "probes", "kernels"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if path == ROOT / "workbench" / "progress.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                if any(n == "tqdm" or n.startswith("tqdm.") for n in names):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == [], f"use workbench.progress.Bar (or tracked) instead of tqdm: {offenders}"
