"""The benchmarks' one timing helper: warm-up calls, then interleaved repeats, each call timed alone.

`time_calls` times several functions against each other in the same run: each is called `warmup` times,
then `repeats` rounds call each once in turn (interleaved, so that drift in the machine's speed hits all
of them alike). A call is timed by `time.perf_counter`, or on a CUDA device by CUDA events around it.
`Timing.median` is the figure to report where timings are noisy, `Timing.best` the fastest call.
`stopwatch` times one section that runs once (a training run, a sweep). No other benchmark module reads
a clock (tests/unit/test_bench.py checks it); `kernels/gpu_check.py`, the standalone GPU script, keeps
its own CUDA-graph timer because it runs without the workbench installed.
"""

from __future__ import annotations

import gc
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Timing:
    """One function's timed calls (warm-up calls excluded): seconds, and peak memory where measured."""

    seconds: list[float] = field(default_factory=list)
    peak_rss_mb: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median_ms(self) -> float:
        return self.median * 1e3


class PeakRSS:
    """Samples this process's resident memory in a thread; `.peak_mb` is the peak above the start."""

    def __init__(self, interval: float = 0.005) -> None:
        import psutil

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


def _time_one(fn: Callable[[], object], cuda: bool, memory: bool, into: Timing) -> None:
    """One call of fn, timed; its return value is kept until the clock (and the memory sampler) stop."""
    if memory:
        with PeakRSS() as rss:
            start = time.perf_counter()
            kept = fn()
            into.seconds.append(time.perf_counter() - start)
        into.peak_rss_mb.append(rss.peak_mb)
        del kept
        gc.collect()
    elif cuda:
        import torch

        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        into.seconds.append(begin.elapsed_time(end) / 1e3)
    else:
        start = time.perf_counter()
        fn()
        into.seconds.append(time.perf_counter() - start)


def time_calls(
    fns: Mapping[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    *,
    cuda: bool = False,
    memory: bool = False,
) -> dict[str, Timing]:
    """Each function's `repeats` timed calls, interleaved, after `warmup` untimed calls of each.

    cuda: time each call by CUDA events on the current stream (device time; the call is synchronised).
    memory: also record each call's peak resident memory above its start (`PeakRSS`), and collect
    garbage after it.
    """
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    timings = {name: Timing() for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _time_one(fn, cuda, memory, timings[name])
    return timings


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1, *, cuda: bool = False) -> float:
    """The median seconds of one function's `repeats` calls after `warmup` calls."""
    return time_calls({"fn": fn}, repeats, warmup, cuda=cuda)["fn"].median


@dataclass
class Stopwatch:
    seconds: float = 0.0


@contextmanager
def stopwatch() -> Iterator[Stopwatch]:
    """Times the `with` block once: `with stopwatch() as watch: ...`, then `watch.seconds`."""
    watch = Stopwatch()
    start = time.perf_counter()
    try:
        yield watch
    finally:
        watch.seconds = time.perf_counter() - start
