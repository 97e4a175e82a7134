"""`workbench capture` / `inspect` end to end: streamed values, verify, kill-and-resume, memory bound."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from workbench.cli import main
from workbench.corpus import windows_for
from workbench.models import load_model
from workbench.probes.capture import ActivationProbe, AttentionProbe, MemorySink, RoutingProbe, capture
from workbench.store import StoreReader


def cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "workbench.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_capture_then_inspect_verify(checkpoints, tmp_path, capsys):
    model = str(checkpoints["mixtral"])
    out = tmp_path / "cap"
    args = ["--model", model, "--tokens", "500", "--context", "32", "--batch-size", "4"]  # 500: a cut window
    assert (
        main(
            [
                "capture",
                *args,
                "--hooks",
                "blocks.*.mlp.hook_post",
                "--attention",
                "--routing",
                "--out",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    captured = json.loads(capsys.readouterr().out)
    assert captured["tokens"] == 500 and captured["complete"] and set(captured["expert_load"]) == {"0", "1"}
    assert main(["inspect", str(out), "--verify", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tokens"] == 500 and summary["complete"] is True
    assert {"routing.blocks.1.topk_indices", "attention.blocks.0.pattern", "blocks.1.mlp.hook_post"} <= set(
        summary["hooks"]
    )
    assert summary["hooks"]["attention.blocks.0.pattern"]["shape"] == [4, 32]

    # the store holds exactly what an in-memory capture of the same windows holds
    handle = load_model(model, progress=False)
    windows = windows_for(handle, n_tokens=500, context=32)
    probes = [ActivationProbe(["blocks.*.mlp.hook_post"]), AttentionProbe(), RoutingProbe()]
    memory = capture(handle, windows, probes, MemorySink(), batch_size=4, progress=False, n_tokens=500)
    stored = StoreReader(out / "store")[0:500]
    for name, value in memory.values.items():
        assert torch.equal(stored[name], value), name
    assert torch.equal(stored["token"], windows.tokens.flatten()[:500])

    # the report shows the capture section, read from the run folder
    report = tmp_path / "report"
    assert main(["report", *args, "--out", str(report), "--include", str(out)]) == 0
    html = (report / "report.html").read_text()
    assert 'data-chart="attention_entropy"' in html and 'data-chart="expert_load"' in html


def test_capture_refuses_bad_input(checkpoints, tmp_path, capsys):
    dense = ["--model", str(checkpoints["gpt2"]), "--tokens", "64", "--context", "16"]
    assert main(["capture", *dense, "--routing", "--out", str(tmp_path / "a")]) == 2
    assert "dense model" in capsys.readouterr().err
    assert main(["capture", *dense, "--hooks", "blocks.*.mlp.hook_pots", "--out", str(tmp_path / "b")]) == 2
    assert "Nearest hook names" in capsys.readouterr().err
    assert (
        main(["capture", *dense, "--corpus", "nope", "--hooks", "blocks.*", "--out", str(tmp_path / "c")])
        == 2
    )
    assert "Unknown corpus 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["capture", "--tokens", "-5"])


def _store_tensors(path: Path) -> dict[str, torch.Tensor]:
    reader = StoreReader(path, verify=True)
    assert reader.complete
    return reader[0 : reader.n_tokens]


def test_kill_and_resume_matches_a_clean_run(tmp_path):
    args = "--model tiny-relu --hooks blocks.0.mlp.hook_post --hooks blocks.2.hook_resid_post --tokens 32768"
    args = [*args.split(), "--batch-size", "2", "--dtype", "float16", "--shard-tokens", "512"]  # 64 shards
    clean = cli("capture", *args, "--out", str(tmp_path / "clean"))
    assert clean.wait(timeout=600) == 0, clean.stderr.read()

    victim = cli("capture", *args, "--out", str(tmp_path / "killed"))
    manifest = tmp_path / "killed" / "store" / "store.json"
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until at least one shard is durable, then kill mid-run
        if manifest.is_file() and json.loads(manifest.read_text()).get("shards"):
            break
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    state = json.loads(manifest.read_text())
    assert state["status"] != "complete", "the capture finished before it could be killed"

    refused = cli("capture", *args, "--out", str(tmp_path / "killed"))
    assert refused.wait(timeout=300) == 2 and "--resume" in refused.stderr.read()
    resumed = cli("capture", *args, "--out", str(tmp_path / "killed"), "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()

    a, b = _store_tensors(tmp_path / "clean" / "store"), _store_tensors(tmp_path / "killed" / "store")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def _peak_rss_mb(tmp_path: Path, tokens: int) -> float:
    script = (
        "import resource, sys\n"
        "from workbench.cli import main\n"
        "rc = main(['capture', '--model', 'tiny-relu', '--corpus', 'pydocs:train',"
        f" '--tokens', '{tokens}', '--hooks', 'blocks.1.mlp.hook_post', '--dtype', 'float16',"
        f" '--out', r'{tmp_path / str(tokens)}'])\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return float(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_tokens(tmp_path):
    small, large = _peak_rss_mb(tmp_path, 20_000), _peak_rss_mb(tmp_path, 200_000)
    print(f"peak RSS: 20k tokens {small:.0f} MB, 200k tokens {large:.0f} MB, ratio {large / small:.3f}")
    assert large <= 1.2 * small
