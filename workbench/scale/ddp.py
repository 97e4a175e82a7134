"""torch.distributed for training: the process group a trainer talks through, and a launcher.

`Comm` is what a trainer needs of its peers: rank and world size, sums and maxima of small tensors,
gathering, a barrier, and wrapping a module in DistributedDataParallel. `SINGLE` is the one-process
comm (every collective is the identity). `ProcessGroup` is a torch.distributed group: gloo on the CPU,
NCCL on GPUs, made by `launch` (which spawns N processes, `--nproc N`) or by `from_env` under torchrun.

Signals: the launched processes sit in their own process group, so a Ctrl-C reaches them once,
forwarded by the launcher; their trainer agrees with its peers on a step to stop at, saves a
checkpoint and stops (transcoders/train.py).
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

import torch

from workbench.errors import WorkbenchError


class Comm:
    """One process alone: every collective returns its input."""

    rank = 0
    world = 1
    device = torch.device("cpu")

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def all_max(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's equally shaped tensor, concatenated along dim 0 in rank order."""
        return tensor

    def barrier(self) -> None:
        pass

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        return module


SINGLE = Comm()


class ProcessGroup(Comm):
    """The default torch.distributed process group, already initialised."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self._dist = dist
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        cuda = dist.get_backend() == "nccl"
        self.device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")

    def _reduce(self, tensor: torch.Tensor, op) -> torch.Tensor:
        out = tensor.detach().to(self.device).clone()
        self._dist.all_reduce(out, op=op)
        return out.to(tensor.device)

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return self._reduce(tensor, self._dist.ReduceOp.SUM)

    def all_max(self, tensor: torch.Tensor) -> torch.Tensor:
        return self._reduce(tensor, self._dist.ReduceOp.MAX)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        local = tensor.detach().to(self.device).contiguous()
        parts = [torch.empty_like(local) for _ in range(self.world)]
        self._dist.all_gather(parts, local)
        return torch.cat(parts).to(tensor.device)

    def barrier(self) -> None:
        self._dist.barrier()

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)


def backend_for(device: str | None) -> str:
    """NCCL for CUDA devices, gloo otherwise."""
    cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    return "nccl" if cuda else "gloo"


def launched_by_torchrun() -> bool:
    """Whether this process is one of several that torchrun (or another launcher) started."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def from_env(device: str | None = None) -> ProcessGroup:
    """The process group torchrun describes in the environment (RANK, WORLD_SIZE, MASTER_ADDR, ...)."""
    import torch.distributed as dist

    backend = backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return ProcessGroup()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, backend: str, fn: Callable, args: tuple, queue) -> None:
    """One launched process: join the group, run `fn(comm, *args)`, report to the launcher."""
    import torch.distributed as dist

    os.setpgrp()  # signals come once, from the launcher, not twice (terminal and launcher)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    os.environ.setdefault("LOCAL_RANK", str(rank))
    if backend == "nccl":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        value = fn(ProcessGroup(), *args)
        # every rank done before any tears the group down, so "ok" below means all finished the work; a
        # SIGABRT in gloo's teardown was still seen once after this barrier (launch keeps the result then)
        dist.barrier()
        if rank == 0:  # as bytes: a tensor sent through the queue would point into this process's memory
            buffer = io.BytesIO()
            torch.save(value, buffer)
            queue.put(("ok", buffer.getvalue()))
    except KeyboardInterrupt as err:  # TrainingInterrupted: a checkpoint was saved by every rank's agreement
        if rank == 0:
            queue.put(("interrupted", str(err), getattr(err, "exit_code", 130)))
    except WorkbenchError as err:
        queue.put(("error", f"process {rank}: {err}", 2))
        raise SystemExit(2) from None
    finally:
        dist.destroy_process_group()


def launch(nproc: int, fn: Callable[..., Any], args: tuple, device: str | None = None) -> Any:
    """Run `fn(comm, *args)` in `nproc` new processes forming one process group (gloo, or NCCL for a
    CUDA `device`); return rank 0's value. SIGINT/SIGTERM here are passed on to them once.

    `fn` must be a module-level function (the processes import it) returning tensors, numbers, strings
    and containers of them. A rank's WorkbenchError is raised
    here; an interrupted run raises KeyboardInterrupt with its message and `exit_code`.
    """
    import torch.multiprocessing as mp

    if nproc < 1:
        raise WorkbenchError(f"--nproc must be at least 1, got {nproc}.")
    backend = backend_for(device)
    if backend == "nccl" and torch.cuda.device_count() < nproc:
        raise WorkbenchError(f"--nproc {nproc} on CUDA needs {nproc} GPUs; {torch.cuda.device_count()} here.")
    queue = mp.get_context("spawn").SimpleQueue()
    entry_args = (nproc, free_port(), backend, fn, args, queue)
    context = mp.start_processes(_entry, args=entry_args, nprocs=nproc, join=False, start_method="spawn")

    def forward(signum, frame) -> None:
        for pid in context.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    failure: BaseException | None = None
    try:
        while not context.join():
            pass
    except Exception as err:  # noqa: BLE001 -- a process failed: its report (if any) says why
        failure = err
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    reports = []
    while not queue.empty():
        reports.append(queue.get())
    for report in reports:
        if report[0] == "error":
            raise WorkbenchError(report[1]) from failure
    for report in reports:
        if report[0] == "interrupted":
            err = KeyboardInterrupt(report[1])
            err.exit_code = report[2]  # type: ignore[attr-defined]
            raise err
    done = [report for report in reports if report[0] == "ok"]  # sent after every rank passed the barrier
    if failure is not None and not done:
        raise WorkbenchError(f"A training process failed: {failure}") from failure
    if failure is not None:  # a rank died in the process group's teardown, after the work
        print(
            f"note: a process ended badly after the work was done ({failure}); its result is kept.",
            file=sys.stderr,
        )
    if done:  # tensors, numbers, strings and containers only (weights_only)
        return torch.load(io.BytesIO(done[0][1]), weights_only=True)
    raise WorkbenchError("The training processes ended without a result.")
