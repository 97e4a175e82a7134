"""A capture on Ray: one task per token range, each writing its own shards into one coordinated store.

The driver computes the fields, opens the coordinating manifest (`workbench.store.ranges.Coordinator`,
which cuts the tokens into ranges of whole shards), and starts one task per unfinished range. A task
loads its own copy of the model, captures its windows into the range's own store (resuming whatever
that store already holds) and folds the reducers it was given. As each task ends the driver records
its range as complete. A failed or killed task leaves its range resumable: the other ranges run to
their end, and `resume=True` later reruns only the unfinished ranges.

Readers see one store holding the same tokens, values, metadata and shard bytes as a one-process
capture of the same windows with the same batch and shard sizes.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.corpus import TokenWindows
from workbench.errors import WorkbenchError
from workbench.models import ModelHandle
from workbench.progress import Bar
from workbench.scale.cluster import Workers, ray_session, task_options, unwrap
from workbench.scale.fold import run_range
from workbench.scale.recipe import ModelRecipe
from workbench.store.ranges import Coordinator
from workbench.store.remote import Remote, is_remote, staging_folder


@dataclass
class ShardedCapture:
    """What a sharded capture did: ranges in all, ranges captured by this call, and the merged reducers
    (None when some range was resumed or done earlier: its reducers saw only part of it)."""

    ranges: int
    ran: list[int] = field(default_factory=list)
    reducers: list | None = None


def capture_range(
    handle: ModelHandle,
    windows: TokenWindows,
    probes: list,
    folder: str,
    info: dict[str, Any],
    start: int,
    n_tokens: int,
    batch_size: int,
    tokens_per_shard: int,
    reducers: list,
    staging_key: str | None = None,
) -> tuple[int, list]:
    """One range's task: capture `n_tokens` of `windows` into the range store `folder` (resuming it),
    folding `reducers` alongside; returns (tokens the store held before, the reducers).

    A `folder` on object storage is written into this worker's staging folder for `staging_key`
    (`Coordinator.range_staging_key`), uploaded once complete, and the staged copy removed."""
    from workbench.probes.capture import ReducerSink, StoreSink, TeeSink, capture

    remote = Remote(folder) if is_remote(folder) else None
    local = staging_folder(staging_key or remote.url) if remote else Path(folder)
    store = StoreSink(local, info, resume=True, tokens_per_shard=tokens_per_shard, base_token=start)
    sink = TeeSink(store, ReducerSink(reducers))
    capture(handle, windows, probes, sink, batch_size=batch_size, progress=False, n_tokens=n_tokens)
    if remote is not None:
        remote.upload_store(local)
        shutil.rmtree(local)
    return store.resumed_from, reducers


def sharded_capture(
    handle: ModelHandle,
    windows: TokenWindows,
    probes: list,
    path: str | Path,
    info: dict[str, Any],
    *,
    workers: Workers,
    batch_size: int = 8,
    tokens_per_shard: int,
    resume: bool = False,
    reducers: list | None = None,
    n_tokens: int | None = None,
    progress: bool = True,
    on_open=None,
    recipe: ModelRecipe | None = None,
) -> ShardedCapture:
    """Capture `probes` over `windows` into the coordinated store at `path` (a folder, a file:// URL or an
    object-storage URL such as s3://bucket/prefix), one Ray task per range of whole shards; `resume`
    continues a store whose capture was interrupted.

    `tokens_per_shard` must be whole batches (`batch_size` windows). `reducers` (fresh) are folded by
    the tasks and merged. `on_open()` runs once the store is open and every check has passed.
    """
    context = windows.context
    if tokens_per_shard % (context * batch_size):
        raise WorkbenchError(
            f"Shards of {tokens_per_shard} tokens are not whole batches of {batch_size} × {context} tokens; "
            "a sharded capture cuts its ranges on shard boundaries, which must fall between batches."
        )
    fields = [spec for probe in probes for spec in probe.fields(handle, context)]
    if not fields:
        raise WorkbenchError("Nothing to capture: give at least one hook pattern, --attention or --routing.")
    total = windows.n_tokens if n_tokens is None else min(n_tokens, windows.n_tokens)
    coord = Coordinator.open(path, fields, total, info, tokens_per_shard, workers.n, resume=resume)
    outcome = ShardedCapture(ranges=len(coord.ranges))
    try:
        for i in coord.pending():
            if coord.range_done(i):  # its task finished, but the driver stopped before recording it
                coord.complete(i)
        todo = coord.pending()
        if on_open is not None:
            on_open()
        parts = (
            _run(
                handle,
                windows,
                probes,
                coord,
                todo,
                info,
                batch_size,
                tokens_per_shard,
                reducers or [],
                workers,
                recipe,
                progress,
            )
            if todo
            else {}
        )
        coord.close()
    except BaseException:
        coord.release()
        raise
    outcome.ran = sorted(parts)
    fresh = len(parts) == outcome.ranges and all(before == 0 for before, _ in parts.values())
    if reducers and fresh:
        for i in sorted(parts):
            for mine, theirs in zip(reducers, parts[i][1], strict=True):
                mine.merge(theirs)
        outcome.reducers = reducers
    return outcome


def _run(
    handle,
    windows,
    probes,
    coord,
    todo,
    info,
    batch_size,
    tokens_per_shard,
    reducers,
    workers,
    recipe,
    progress,
) -> dict[int, tuple[int, list]]:
    """Start a task for each range of `todo`; record each as it completes; raise if any failed."""
    context = windows.context
    recipe = recipe or ModelRecipe.of(handle)
    with ray_session(workers) as ray:
        remote = ray.remote(run_range).options(**task_options(workers, recipe.device))
        refs, threads = {}, workers.task_threads()
        for i in todo:
            r = coord.ranges[i]
            part = windows.part(r["start"] // context, -(-r["stop"] // context))
            args = (
                probes,
                coord.range_location(i),
                info | {"range": i},
                r["start"],
                r["stop"] - r["start"],
                batch_size,
                tokens_per_shard,
                reducers,
                coord.range_staging_key(i),
            )
            refs[remote.remote(recipe, capture_range, part, args, threads)] = i
        tokens = sum(coord.ranges[i]["stop"] - coord.ranges[i]["start"] for i in todo)
        bar = Bar(tokens, unit="tokens", desc=f"capture {handle.name} on {workers.n} workers", show=progress)
        done: dict[int, tuple[int, list]] = {}
        failed: dict[int, str] = {}
        waiting = list(refs)
        try:
            while waiting:
                ready, waiting = ray.wait(waiting, num_returns=1)
                i = refs[ready[0]]
                try:
                    done[i] = unwrap(ray, lambda ref=ready[0]: ray.get(ref), f"range {i}")
                    coord.complete(i)
                except WorkbenchError as err:
                    failed[i] = str(err)
                except Exception as err:  # noqa: BLE001 -- any task error leaves its range resumable
                    failed[i] = f"{type(err).__name__}: {err}"
                r = coord.ranges[i]
                bar.update(r["stop"] - r["start"])
        finally:
            bar.close()
    if failed:
        lines = "; ".join(
            f"range {i}: {msg.splitlines()[0] if msg else '?'}" for i, msg in sorted(failed.items())
        )
        raise WorkbenchError(
            f"{len(failed)} of {len(todo)} capture ranges failed ({lines}). The "
            f"{len(coord.ranges) - len(coord.pending())} complete ranges of {coord.location} are kept: run "
            "the same command with --resume to redo only the rest."
        )
    return done
