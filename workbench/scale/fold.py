"""Reducer analyses over Ray: each worker folds its own windows, and the reducers merge in range order.

The windows are cut into one contiguous range of whole batches per worker (the batches a one-process
run makes, so each batch's values are computed exactly as there). Every task gets a copy of the fresh
reducers, loads its own copy of the model (`ModelRecipe`), folds its range and returns the reducers;
the driver merges them into its own in range order (`Reducer.merge`). Sums, counts and histograms
merge exactly; float sums differ from one process's only by the order of the additions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from workbench.corpus import TokenWindows
from workbench.models import ModelHandle
from workbench.progress import Bar
from workbench.scale.cluster import Workers, gather, ray_session, task_options
from workbench.scale.recipe import ModelRecipe


def window_ranges(n_windows: int, batch_size: int, parts: int) -> list[tuple[int, int]]:
    """Up to `parts` contiguous window ranges of whole batches (at least one each), as even as can be."""
    n_batches = -(-n_windows // batch_size)
    parts = max(1, min(parts, n_batches))
    bounds = [i * n_batches // parts for i in range(parts + 1)]
    return [
        (lo * batch_size, min(hi * batch_size, n_windows)) for lo, hi in zip(bounds, bounds[1:], strict=False)
    ]


def capture_fold(
    handle: ModelHandle,
    windows: TokenWindows,
    probes: list,
    reducers: list,
    batch_size: int,
    progress: bool = False,
) -> list:
    """One range's work for `fold`: capture `probes` over `windows` into `reducers`, return them."""
    from workbench.probes.capture import ReducerSink, capture

    capture(handle, windows, probes, ReducerSink(reducers), batch_size=batch_size, progress=progress)
    return reducers


def fold(
    handle: ModelHandle,
    windows: TokenWindows,
    probes: list,
    reducers: list,
    *,
    batch_size: int = 8,
    progress: bool = True,
    workers: Workers | None = None,
    recipe: ModelRecipe | None = None,
) -> list:
    """Capture `probes` over `windows` into the (fresh) `reducers`: in this process, or with `workers`
    over Ray (each worker its own range and model copy), merged. Returns `reducers`."""
    if workers is None:
        return capture_fold(handle, windows, probes, reducers, batch_size, progress)
    parts = fold_ranges(
        windows,
        capture_fold,
        (probes, reducers, batch_size),
        workers=workers,
        recipe=recipe or ModelRecipe.of(handle),
        batch_size=batch_size,
        progress=progress,
        desc=f"capture {handle.name} on {workers.n} workers",
    )
    for part in parts:
        for mine, theirs in zip(reducers, part, strict=True):
            mine.merge(theirs)
    return reducers


def run_range(
    recipe: ModelRecipe, fn: Callable[..., Any], windows: TokenWindows, args: tuple, threads: int
) -> Any:
    """What one Ray task runs: `fn(handle, windows, *args)` on this worker's copy of the model, with
    `threads` torch threads (the driver's, so that every kernel rounds as it does there)."""
    import torch

    torch.set_num_threads(threads)
    with torch.inference_mode():
        return fn(recipe.load(), windows, *args)


def fold_ranges(
    windows: TokenWindows,
    fn: Callable[..., Any],
    args: tuple,
    *,
    workers: Workers,
    recipe: ModelRecipe,
    batch_size: int,
    progress: bool = True,
    desc: str = "fold",
) -> list[Any]:
    """`fn(handle, part, *args)` for each range's `part` of `windows` (a module-level function, so that
    workers import it), one Ray task per range; the values in range order."""
    ranges = window_ranges(windows.n_windows, batch_size, workers.n)
    with ray_session(workers) as ray:
        remote = ray.remote(run_range).options(**task_options(workers, recipe.device))
        threads = workers.task_threads()
        refs = [remote.remote(recipe, fn, windows.part(lo, hi), args, threads) for lo, hi in ranges]
        bar = Bar(windows.n_tokens, unit="tokens", desc=desc, show=progress)
        try:
            return gather(ray, refs, lambda i, _: bar.update((ranges[i][1] - ranges[i][0]) * windows.context))
        finally:
            bar.close()
