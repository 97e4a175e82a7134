"""A capture SIGKILLed mid-run and resumed ends byte-identical to a clean run (store level, no model)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from workbench.store import StoreReader

N_TOKENS = 200_000
TOKENS_PER_SHARD = 4096
BATCH = 1000  # not a divisor of the shard size, so shards cut through batches

WRITER = """
import sys, time
import torch
from workbench.store import FieldSpec, StoreWriter

torch.set_num_threads(1)  # the test runs three writers at once

path, n_tokens, per_shard, batch, pause = sys.argv[1], *map(int, sys.argv[2:5]), float(sys.argv[5])
fields = [
    FieldSpec("blocks.0.mlp.hook_post", (16,), "float32"),
    FieldSpec("blocks.0.hook_resid_post", (8,), "bfloat16"),
    FieldSpec("routing.blocks.0.topk_indices", (2,), "int16"),
]

def values(idx):  # a pure function of the token index, exact in every dtype: batching cannot change it
    mix = idx[:, None] * 2654435761 + torch.arange(16) * 40503
    return (
        {
            fields[0].name: (mix % 100003).float() / 64 - 700,
            fields[1].name: ((mix[:, :8] % 255) - 127).to(torch.bfloat16),
            fields[2].name: (mix[:, :2] % 8).to(torch.int16),
        },
        {"token": mix[:, 0] % 4096, "doc": idx // 300, "domain": idx // 50_000, "position": idx % 100,
         "window": idx // 100},
    )

writer = StoreWriter.open(path, fields, n_tokens, {"model": {"name": "synthetic"}}, resume=True,
                          tokens_per_shard=per_shard)
start = writer.tokens_done  # the caller redoes whatever was buffered but not durable
for lo in range(start, n_tokens, batch):
    writer.append(*values(torch.arange(lo, min(lo + batch, n_tokens))))
    time.sleep(pause)
writer.close()
print("started at", start)
"""


def run_writer(script: Path, store: Path, pause: float) -> subprocess.Popen:
    args = [
        sys.executable,
        str(script),
        str(store),
        str(N_TOKENS),
        str(TOKENS_PER_SHARD),
        str(BATCH),
        str(pause),
    ]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def tokens_written(store: Path) -> int:
    try:
        return json.loads((store / "store.json").read_text())["tokens_written"]
    except (FileNotFoundError, ValueError):
        return 0


def everything(reader: StoreReader) -> dict[str, torch.Tensor]:
    batches = list(reader.iter_batches(list(reader.fields), 4096))
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_killed_capture_resumes_to_the_clean_result(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    clean = run_writer(script, tmp_path / "clean", pause=0.0)

    killed = tmp_path / "killed"
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    durable = []
    for round_ in range(2):  # kill twice: the second kill hits a resumed writer
        proc = run_writer(script, killed, pause=0.01)
        floor = tokens_written(killed) + TOKENS_PER_SHARD
        deadline = time.monotonic() + 60
        while tokens_written(killed) < floor and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.8))
        assert proc.poll() is None, f"writer finished before the kill (seed {seed}): {proc.communicate()}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        durable.append(tokens_written(killed))
        assert durable[-1] % TOKENS_PER_SHARD == 0 and 0 < durable[-1] < N_TOKENS, (seed, round_, durable)
    assert durable[1] > durable[0]

    final = run_writer(script, killed, pause=0.0)
    out, err = final.communicate(timeout=120)
    assert final.returncode == 0, err
    assert int(out.split()[-1]) == durable[-1], (seed, out, durable)  # resumed right after the listed shards
    out, err = clean.communicate(timeout=120)
    assert clean.returncode == 0, err

    reference, resumed = StoreReader(tmp_path / "clean", verify=True), StoreReader(killed, verify=True)
    assert resumed.complete and resumed.n_tokens == reference.n_tokens == N_TOKENS
    keys = ("file", "start", "stop", "bytes", "xxh3_128")
    assert [{k: s[k] for k in keys} for s in resumed.shards] == [
        {k: s[k] for k in keys} for s in reference.shards
    ]
    expected, got = everything(reference), everything(resumed)
    for name in expected:
        assert got[name].dtype == expected[name].dtype and torch.equal(got[name], expected[name]), (
            name,
            seed,
        )
    assert len(resumed.manifest["resumes"]) == 2
    assert sorted(p.name for p in killed.iterdir() if not p.name.startswith("shard-")) == [
        "store.json",
        "store.lock",
    ]
