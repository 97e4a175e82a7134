"""`workbench bench capture` and `workbench bench essential` end to end on tiny-relu: their JSON keys.

(`bench replay` and `bench transcoder` are exercised in test_replay_cli.py and test_transcoder_cli.py.)
No test asserts a time: only that each figure is there and is a ratio of positive timings.
"""

from __future__ import annotations

import json

import pytest

from workbench.cli import main
from workbench.errors import WorkbenchError


def run_json(capsys, argv) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_bench_capture_keys(capsys):
    body = run_json(capsys, ["bench", "capture", "--model", "tiny-relu", "--tokens", "256", "--json"])
    modes = ("plain_forward", "run_with_cache", "workbench_capture")
    assert list(body) == [
        "model", "tokens", "batch_size", "hooks", *modes,
        "ratio_vs_run_with_cache", "overhead_vs_forward", "threads", "repeats",
    ]  # fmt: skip
    for mode in modes:
        assert list(body[mode]) == ["seconds", "peak_rss_mb", "tokens_per_s"]
        assert body[mode]["seconds"] > 0
    ours, theirs = body["workbench_capture"], body["run_with_cache"]
    assert body["ratio_vs_run_with_cache"] == pytest.approx(ours["tokens_per_s"] / theirs["tokens_per_s"])


def test_bench_essential_keys(capsys):
    body = run_json(capsys, ["bench", "essential", "--model", "tiny-relu", "--tokens", "256", "--json"])
    assert list(body) == [
        "model", "tokens", "evaluations", "one_evaluation_seconds", "sweep_seconds", "setup_seconds",
        "sweep_over_evals", "essential_sparsity", "threads",
    ]  # fmt: skip
    expected = body["sweep_seconds"] / (body["evaluations"] * body["one_evaluation_seconds"])
    assert body["sweep_over_evals"] == pytest.approx(expected)


def test_unknown_benchmark_names_the_known_ones():
    from workbench.bench import BENCHMARKS

    with pytest.raises(WorkbenchError, match="capture, essential, transcoder, replay"):
        BENCHMARKS.get("captur")
