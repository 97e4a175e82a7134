"""Benchmarks, all in this package: each prints ratios against baselines measured in the same run.

One module per benchmark, registered by name for `workbench bench NAME`:

- `capture`: plain forward vs TransformerLens `run_with_cache` vs workbench capture to a store;
- `essential`: a pruning sweep's cost over (its evaluations × one evaluation pass);
- `transcoder`: the workbench's transcoder training against EleutherAI sparsify's;
- `replay`: prefix reuse, the sparse MLP on the CPU (`kernels`) and the Triton kernels (`gpu_kernels`);
- `widgets`: the edit explorer's update latency after a control moves, against a plain forward;
- `scale`: capture on 1 and 2 Ray workers and transcoder training on 1 and 2 DDP processes (`.[scale]`).

`timing` is the one timing helper all of them use. Importing this package imports no benchmark: each
module loads when its benchmark runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from workbench.registry import Registry

BENCHMARKS: Registry[Callable[..., dict]] = Registry("benchmark")


def _lazy(module: str, function: str) -> Callable[..., dict]:
    def run(handle, windows, **options) -> dict:
        benchmark = getattr(importlib.import_module(f"workbench.bench.{module}"), function)
        return benchmark(handle, windows, **options)

    run.__name__ = run.__qualname__ = function
    run.__doc__ = f"`workbench.bench.{module}.{function}`, imported when it runs."
    return run


BENCHMARKS.register("capture", _lazy("capture", "bench_capture"))
BENCHMARKS.register("essential", _lazy("essential", "bench_essential"))
BENCHMARKS.register("transcoder", _lazy("transcoder", "bench_transcoder"))
BENCHMARKS.register("replay", _lazy("replay", "bench_replay"))
BENCHMARKS.register("widgets", _lazy("widgets", "bench_widgets"))
BENCHMARKS.register("scale", _lazy("scale", "bench_scale"))
