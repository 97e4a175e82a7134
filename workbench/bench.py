"""Benchmarks: each prints ratios against baselines measured in the same run (never a test).

`workbench bench essential`: a pruning sweep's cost over (its evaluations × one evaluation pass).

`workbench bench capture`: on the same batches, (a) a plain forward of the Hugging Face model,
(b) TransformerLens `run_with_cache` keeping the same hooks in memory, (c) workbench capture
streaming them to an on-disk store. Hooks: every layer's MLP post-activation and full attention
patterns, float32.
"""

from __future__ import annotations

import gc
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import torch

from workbench.registry import Registry


class PeakRSS:
    """Samples this process's resident memory in a thread; `.peak_mb` is the peak above the start."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval, self.start, self.peak = interval, 0, 0
        self._stop = threading.Event()
        self._proc = psutil.Process()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        gc.collect()
        self.start = self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def peak_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        kept = fn()
        seconds = time.perf_counter() - t0
    del kept
    return seconds, rss.peak_mb


def bench_capture(handle, windows, batch_size: int = 4, progress: bool = False, repeats: int = 2) -> dict:
    """Tokens/s and peak memory of plain forward, run_with_cache and streaming capture, plus the ratios.

    The three run interleaved `repeats` times; each keeps its fastest run (timings here are noisy).
    """
    from workbench.capturing import shard_tokens
    from workbench.probes.capture import ActivationProbe, AttentionProbe, StoreSink, capture

    hooks = [f"blocks.{layer}.mlp.hook_post" for layer in range(handle.facts.n_layers)]
    hooks += [f"blocks.{layer}.attn.hook_pattern" for layer in range(handle.facts.n_layers)]
    batches = [b.tokens for b in windows.batches(batch_size)]
    hf = handle.hf_model

    def plain():
        with torch.inference_mode():
            for tokens in batches:
                hf(tokens)

    def run_with_cache():
        caches = []
        with torch.inference_mode():
            for tokens in batches:
                caches.append(handle.model.run_with_cache(tokens, names_filter=lambda n: n in hooks)[1])
        return caches

    def streamed():
        with tempfile.TemporaryDirectory() as tmp:
            probes = [ActivationProbe(["blocks.*.mlp.hook_post"]), AttentionProbe()]
            per_shard = shard_tokens(probes, handle, windows.context, batch_size)
            sink = StoreSink(Path(tmp) / "store", {"bench": "capture"}, tokens_per_shard=per_shard)
            capture(handle, windows, probes, sink, batch_size=batch_size, progress=progress)

    with torch.inference_mode():
        hf(batches[0])  # warm-up
    tokens = windows.n_tokens
    results: dict[str, dict] = {}
    modes = (("plain_forward", plain), ("run_with_cache", run_with_cache), ("workbench_capture", streamed))
    for _ in range(repeats):  # interleaved; each mode keeps its fastest run, and its largest peak
        for name, fn in modes:
            seconds, peak = _timed(fn)
            best = results.setdefault(name, {"seconds": float("inf"), "peak_rss_mb": 0.0})
            best["seconds"] = min(best["seconds"], seconds)
            best["tokens_per_s"] = tokens / best["seconds"]
            best["peak_rss_mb"] = max(best["peak_rss_mb"], peak)
            gc.collect()
    return {
        "model": handle.name,
        "tokens": tokens,
        "batch_size": batch_size,
        "hooks": "blocks.*.mlp.hook_post + blocks.*.attn.hook_pattern, float32",
        **results,
        "ratio_vs_run_with_cache": results["workbench_capture"]["tokens_per_s"]
        / results["run_with_cache"]["tokens_per_s"],
        "overhead_vs_forward": results["workbench_capture"]["seconds"] / results["plain_forward"]["seconds"],
        "threads": torch.get_num_threads(),
        "repeats": repeats,
    }


def bench_essential(handle, windows, batch_size: int = 4, progress: bool = False, repeats: int = 2) -> dict:
    """A global magnitude sweep's wall time over (its evaluations × one plain evaluation pass)."""
    from workbench.essential import sweep
    from workbench.evaluate import evaluate

    evaluate(handle, windows, batch_size=batch_size, progress=False)  # warm-up
    one_eval = min(
        _timed(lambda: evaluate(handle, windows, batch_size=batch_size, progress=False))[0]
        for _ in range(repeats)
    )
    t0 = time.perf_counter()
    result = sweep(handle, windows, "global", "magnitude", batch_size=batch_size, progress=progress)
    seconds = time.perf_counter() - t0
    evaluations = result.timing["evaluations"]
    return {
        "model": handle.name,
        "tokens": windows.n_tokens,
        "evaluations": evaluations,
        "one_evaluation_seconds": one_eval,
        "sweep_seconds": seconds,
        "setup_seconds": result.timing["setup_seconds"],
        "sweep_over_evals": seconds / (evaluations * one_eval),
        "essential_sparsity": result.essential_sparsity,
        "threads": torch.get_num_threads(),
    }


BENCHMARKS: Registry[Callable] = Registry("benchmark")
BENCHMARKS.register("capture", bench_capture)
BENCHMARKS.register("essential", bench_essential)


def bench_transcoder(handle, windows, batch_size: int = 8, **options) -> dict:
    from workbench.transcoders.bench import bench_transcoder as run

    return run(handle, windows, batch_size=batch_size, **options)


BENCHMARKS.register("transcoder", bench_transcoder)


def bench_replay(handle, windows, batch_size: int = 4, **options) -> dict:
    from workbench.replay.bench import bench_replay as run

    return run(handle, windows, batch_size=batch_size, **options)


BENCHMARKS.register("replay", bench_replay)
