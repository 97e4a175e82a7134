"""Which workers an analysis fans out to, and a Ray session for them; Ray loads only when asked for."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from workbench.errors import WorkbenchError

RAY_MISSING = (
    "--workers runs on Ray, an optional extra that is not installed here: pip install "
    "'interp-workbench[scale]' (or drop --workers to run in this process)."
)


@dataclass(frozen=True)
class Workers:
    """`n` Ray tasks at once; `address`: join that Ray cluster ("auto", "HOST:PORT", "ray://HOST:PORT"),
    else start a local one with `n` CPUs (or use the one this process already started)."""

    n: int
    address: str | None = None
    max_retries: int = 2  # Ray reruns a task whose worker died this often (a range resumes where it was)
    # torch threads in each task; None: as many as this process uses, because some kernels (MoE expert
    # sums among them) round differently with another thread count, and a worker's values must be the
    # bytes a one-process run computes
    threads: int | None = None

    def task_threads(self) -> int:
        import torch

        return self.threads or torch.get_num_threads()

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise WorkbenchError(f"--workers must be a whole number >= 1, got {self.n!r}.")


def workers_from(n: int | None, address: str | None = None) -> Workers | None:
    """`Workers` for the --workers / --ray-address flags, or None to run in this process."""
    if n is None and address is None:
        return None
    return Workers(n or 1, address)


def require_ray() -> Any:
    """The ray module, or a WorkbenchError saying how to install it."""
    try:
        import ray
    except ImportError as err:
        raise WorkbenchError(RAY_MISSING) from err
    return ray


@contextlib.contextmanager
def ray_session(workers: Workers) -> Iterator[Any]:
    """Ray, connected: to `workers.address`, to the session this process already has, or to a local
    cluster started here with `workers.n` CPUs (shut down again on exit)."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}  # stdout stays JSON
    if workers.address:
        options["address"] = workers.address
    else:
        options["num_cpus"] = workers.n
    try:
        ray.init(**options)
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = workers.address or "a local cluster"
        raise WorkbenchError(f"Could not start or join Ray at {where}: {err}") from err
    try:
        yield ray
    finally:
        ray.shutdown()


def task_options(workers: Workers, device: str) -> dict[str, Any]:
    """Resources of one task: a CPU, and a GPU when the model runs on CUDA."""
    gpus = 1 if device.startswith("cuda") else 0
    return {"num_cpus": 1, "num_gpus": gpus, "max_retries": workers.max_retries}


def gather(ray: Any, refs: list[Any], on_done=None) -> list[Any]:
    """Every task's value, in the order of `refs`; `on_done(i, value)` as each finishes. A task's
    WorkbenchError is raised as itself; a dead worker as a WorkbenchError naming its task."""
    index = {ref: i for i, ref in enumerate(refs)}
    values: list[Any] = [None] * len(refs)
    waiting = list(refs)
    while waiting:
        ready, waiting = ray.wait(waiting, num_returns=1)
        i = index[ready[0]]
        values[i] = unwrap(ray, lambda ref=ready[0]: ray.get(ref), f"task {i}")
        if on_done is not None:
            on_done(i, values[i])
    return values


def unwrap(ray: Any, get, what: str) -> Any:
    """`get()`, with Ray's wrappers taken off: the task's own WorkbenchError, or one for a dead worker."""
    try:
        return get()
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, WorkbenchError):
            raise cause from None
        raise
    except (
        ray.exceptions.WorkerCrashedError,
        ray.exceptions.NodeDiedError,
        ray.exceptions.TaskCancelledError,
    ) as err:
        raise WorkbenchError(f"The Ray worker running {what} died ({type(err).__name__}).") from err
