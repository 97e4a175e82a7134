"""`workbench bench scale`: capture and transcoder-training throughput at 1 and 2 workers, and the ratios.

Capture: the same windows (every layer's MLP activations, float32) captured into a coordinated store
by Ray tasks (`workbench.scale.capture`) with 1 worker and with 2, interleaved `repeats` times after a
warm-up that starts the workers and loads their models; the in-process capture of the same store is
the baseline. Every capture runs with one torch thread (the workers and the in-process baseline), so
that 2 workers on 2 cores compare with 1 worker on 1 core; the in-process capture with all threads is
listed too. Training: `transcoder train` with DDP over 1 and 2 gloo processes (one thread each),
timed end to end (process start, model load, data, training) and by the training loop's own clock.

Efficiency = tokens/s with 2 / (2 × tokens/s with 1): 1.0 is perfect scaling.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from workbench.bench.timing import stopwatch, time_calls
from workbench.corpus import TokenWindows
from workbench.models import MODELS, ModelHandle


def _capture_modes(handle: ModelHandle, windows: TokenWindows, batch_size: int, root: Path) -> dict:
    from workbench.capturing import shard_tokens
    from workbench.probes.capture import ActivationProbe, StoreSink, capture
    from workbench.scale.capture import sharded_capture
    from workbench.scale.cluster import Workers

    probes = [ActivationProbe(["blocks.*.mlp.hook_post"])]
    per_shard = shard_tokens(probes, handle, windows.context, batch_size, target_bytes=4 * 2**20)
    runs = iter(range(10**6))

    def in_process(threads: int):
        def run() -> None:
            previous = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                sink = StoreSink(root / f"store-{next(runs)}", {"bench": "scale"}, tokens_per_shard=per_shard)
                capture(handle, windows, probes, sink, batch_size=batch_size, progress=False)
            finally:
                torch.set_num_threads(previous)

        return run

    def on_ray(n: int):
        workers = Workers(n, threads=1)

        def run() -> None:
            path = root / f"store-{next(runs)}"
            sharded_capture(
                handle,
                windows,
                probes,
                path,
                {"bench": "scale"},
                workers=workers,
                batch_size=batch_size,
                tokens_per_shard=per_shard,
                progress=False,
            )

        return run

    modes = {"in_process_1_thread": in_process(1), "ray_1_worker": on_ray(1), "ray_2_workers": on_ray(2)}
    return {"modes": modes, "tokens_per_shard": per_shard, "all_threads": in_process(torch.get_num_threads())}


def _train(handle: ModelHandle, nproc: int, out: Path, tokens: int, width: int, k: int, context: int) -> dict:
    from workbench.scale.ddp import launch
    from workbench.transcoders.distributed import TrainRequest, train_process
    from workbench.transcoders.run import TranscoderSettings
    from workbench.transcoders.train import TrainConfig

    settings = TranscoderSettings(width=width, k=k, train=TrainConfig(tokens=tokens, batch_size=1024))
    model = handle.name if handle.name in MODELS else str(handle.folder)
    request = TrainRequest(
        model=model, device="cpu", settings=settings, out=out, context=context, threads=1, progress=False
    )
    with stopwatch() as watch:
        record = launch(nproc, train_process, (request,), device="cpu")
    return {
        "processes": nproc,
        "tokens": record["tokens"],
        "seconds_end_to_end": watch.seconds,
        "tokens_per_s_end_to_end": record["tokens"] / watch.seconds,
        "tokens_per_s_training_loop": record["tokens_per_second"],
        "final_fvu": record["curve"][-1]["fvu"] if record["curve"] else None,
    }


def bench_scale(
    handle: ModelHandle,
    windows: TokenWindows,
    batch_size: int = 4,
    progress: bool = False,
    repeats: int = 2,
    train_tokens: int = 65536,
    width: int | None = None,
    k: int = 32,
) -> dict:
    """Capture tokens/s in process and on 1 and 2 Ray workers; training tokens/s on 1 and 2 DDP processes."""
    from workbench.scale.cluster import Workers, ray_session

    body: dict = {"model": handle.name, "tokens": windows.n_tokens, "batch_size": batch_size}
    with tempfile.TemporaryDirectory() as tmp, ray_session(Workers(2)):
        root = Path(tmp)
        capture = _capture_modes(handle, windows, batch_size, root)
        timings = time_calls(capture["modes"], repeats, warmup=1)
        all_threads = time_calls({"all": capture["all_threads"]}, repeats, warmup=0)["all"]
        rates = {name: windows.n_tokens / t.median for name, t in timings.items()}
        body["capture"] = {
            "hooks": "blocks.*.mlp.hook_post, float32",
            "tokens_per_shard": capture["tokens_per_shard"],
            "tokens_per_s": rates,
            "seconds_median": {name: t.median for name, t in timings.items()},
            "in_process_all_threads_tokens_per_s": windows.n_tokens / all_threads.median,
            "threads_all": torch.get_num_threads(),
            "speedup_2_vs_1_worker": rates["ray_2_workers"] / rates["ray_1_worker"],
            "efficiency_2_workers": rates["ray_2_workers"] / (2 * rates["ray_1_worker"]),
            "ray_1_worker_vs_in_process": rates["ray_1_worker"] / rates["in_process_1_thread"],
        }
    width = width or 8 * handle.facts.d_model
    with tempfile.TemporaryDirectory() as tmp:
        one = _train(handle, 1, Path(tmp) / "one", train_tokens, width, k, windows.context)
        two = _train(handle, 2, Path(tmp) / "two", train_tokens, width, k, windows.context)
    body["train"] = {
        "width": width,
        "k": k,
        "batch_tokens": 1024,
        "nproc_1": one,
        "nproc_2": two,
        "speedup_2_vs_1_end_to_end": two["tokens_per_s_end_to_end"] / one["tokens_per_s_end_to_end"],
        "efficiency_2_end_to_end": two["tokens_per_s_end_to_end"] / (2 * one["tokens_per_s_end_to_end"]),
        "speedup_2_vs_1_training_loop": two["tokens_per_s_training_loop"] / one["tokens_per_s_training_loop"],
        "efficiency_2_training_loop": two["tokens_per_s_training_loop"]
        / (2 * one["tokens_per_s_training_loop"]),
    }
    body["repeats"] = repeats
    body["cpu_count"] = _cpus()
    return body


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
