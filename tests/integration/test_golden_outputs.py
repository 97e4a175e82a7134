"""Every command's `--json` figures stay the same on the same seed: restructuring must not move a number.

The recorded outputs live in tests/golden/. Record them anew only on purpose, when a figure is meant to
change (say why in the commit):

    WORKBENCH_RECORD_GOLDEN=1 python -m pytest tests/integration/test_golden_outputs.py
Volatile fields (dates, timings, package versions, paths, the command line) are left out of the comparison.

On the machine that recorded them (tests/golden/machine.json: CPU model and flags, torch, threads) the
figures must agree to 1e-9. Another CPU's float32 kernels round differently, and that is not a change of
ours: between two machines the forward figures moved by up to 3.7e-7 relative, a transcoder trained for
16 steps by 2.8e-6 between two Intel Xeons and by 4.6e-4 (its CE recovered, a ratio over a 0.16-nat
difference) on an AMD EPYC, and moefy's clustering put a few neurons in another expert (NMI 0.070 → 0.079,
router recall 0.855 → 0.854). Elsewhere the comparison therefore uses CROSS_MACHINE's tolerances.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
RECORD = os.environ.get("WORKBENCH_RECORD_GOLDEN") == "1"
VOLATILE = re.compile(
    r"(^|\.)(date|packages|command|checkpoint|path|run|out|report|store|seconds|\w+_seconds|\w+_ms|"
    r"tokens_per_second|speed\w*|elapsed\w*|wall\w*)$"
)
REL_TOL = 1e-9  # on the recording machine
# elsewhere, (relative, absolute) tolerances
CROSS_MACHINE = {"default": (1e-6, 1e-12), "transcoder_eval": (2e-3, 1e-12), "moefy": (1e-6, 0.03)}

COMMANDS = {
    "evaluate": ["evaluate", "--model", "tiny-relu", "--tokens", "2048"],
    "sparsity": ["sparsity", "--model", "tiny-relu", "--tokens", "2048", "--inputs", "heldout,random"],
    "essential": ["essential", "--model", "tiny-relu", "--tokens", "1024", "--levels", "0.3,0.6"],
    "experts": ["experts", "--model", "tiny-moe", "--tokens", "2048"],
    "moefy": ["moefy", "--model", "tiny-relu", "--tokens", "2048", "--experts", "4", "--k", "1"],
    "replay": [
        "replay", "--model", "tiny-relu", "--tokens", "512",
        "--edit", '[{"kind": "topk", "layer": 1, "k": 64}, {"kind": "head_mask", "layer": 2, "heads": [0]}]',
    ],
    # trained in the test with a fixed seed, then evaluated: covers training and evaluation
    "transcoder_eval": ["transcoder", "eval", "{tc}", "--tokens", "2048", "--features"],
}  # fmt: skip
TRAIN_TRANSCODER = [
    "transcoder", "train", "--model", "tiny-relu", "--tokens", "16384", "--width", "512",
    "--batch-tokens", "1024", "--out", "{tc}",
]  # fmt: skip


def flatten(value, prefix: str = "") -> dict[str, object]:
    """Leaves of a JSON value by dotted path, volatile ones left out."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return {} if VOLATILE.search(prefix) else {prefix: value}
    out: dict[str, object] = {}
    for key, sub in items:
        path = f"{prefix}.{key}" if prefix else str(key)
        if not VOLATILE.search(path):
            out.update(flatten(sub, path))
    return out


def run_json(argv: list[str], cwd: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "workbench.cli", *argv, "--seed", "0", "--json"],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def machine() -> dict:
    """What decides how float32 kernels round here: CPU model and flags, torch, its thread count."""
    import platform

    import torch

    cpu = {}
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "flags") and key.strip() not in cpu:
                cpu[key.strip()] = value.strip()
    threads = torch.get_num_threads()
    return {"machine": platform.machine(), **cpu, "torch": torch.__version__, "threads": threads}


def tolerance(name: str) -> tuple[float, float]:
    recorded = GOLDEN / "machine.json"
    if recorded.is_file() and json.loads(recorded.read_text()) == machine():
        return REL_TOL, 1e-12
    return CROSS_MACHINE.get(name, CROSS_MACHINE["default"])


def differences(recorded: dict, now: dict, rel: float = REL_TOL, abs_: float = 1e-12) -> list[str]:
    problems = [f"{k}: missing now" for k in recorded if k not in now]
    problems += [f"{k}: new field" for k in now if k not in recorded]
    for key in recorded.keys() & now.keys():
        a, b = recorded[key], now[key]
        if isinstance(a, float) and isinstance(b, (int, float)):
            same = (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=rel, abs_tol=abs_)
        else:
            same = a == b
        if not same:
            problems.append(f"{key}: recorded {a!r}, now {b!r}")
    return sorted(problems)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_json_figures_match_the_recorded_outputs(name, tmp_path):
    tc = str(tmp_path / "tc")
    if name == "transcoder_eval":
        run_json([arg.replace("{tc}", tc) for arg in TRAIN_TRANSCODER], tmp_path)
    now = flatten(run_json([arg.replace("{tc}", tc) for arg in COMMANDS[name]], tmp_path))
    path = GOLDEN / f"{name}.json"
    if RECORD:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
        (GOLDEN / "machine.json").write_text(json.dumps(machine(), indent=1) + "\n")
        pytest.skip(f"recorded {path.name}")
    assert path.is_file(), f"no recorded output: run with WORKBENCH_RECORD_GOLDEN=1 ({path})"
    problems = differences(json.loads(path.read_text()), now, *tolerance(name))
    assert not problems, "\n".join(problems[:40])
