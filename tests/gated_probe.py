"""A probe that stops one Ray worker mid-range, and the driver that kills it there, for the kill-and-resume
tests of sharded captures. Imported by name (`from gated_probe import GatedProbe`, as tiny_checkpoints
is); Ray's workers get the probe by value, since they cannot import the tests folder."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ray
import torch

from workbench.probes.capture import ActivationProbe

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@dataclass
class GatedProbe(ActivationProbe):
    """An activation probe whose first worker to reach `after` batches takes `gate` (a file made
    exclusively), writes its pid there and then hangs until it is killed; any other runs on."""

    gate: str = ""
    after: int = 3

    def take(self, batch: int, pos: int) -> dict[str, torch.Tensor]:
        out = super().take(batch, pos)
        self.after -= 1
        if self.after == 0:
            try:
                fd = os.open(self.gate, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return out
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            while True:  # held here, mid-range, until the test kills this worker
                time.sleep(0.05)
        return out


def capture_killed_at_gate(
    capture: Callable[[GatedProbe], object], hooks: list[str], gate: Path
) -> BaseException:
    """Run `capture(probe)` (a sharded capture with a `GatedProbe` on `gate`) on a thread, SIGKILL the
    worker that reaches the gate, and return what the capture raised (it must raise)."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            capture(GatedProbe(hooks, gate=str(gate)))
        except BaseException as err:  # noqa: BLE001 -- handed to the test thread
            failure.append(err)

    driver = threading.Thread(target=run)
    driver.start()
    deadline = time.monotonic() + 240
    while not (gate.is_file() and gate.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gate.is_file(), "no worker reached the gate"
    os.kill(int(gate.read_text()), signal.SIGKILL)
    driver.join(240)
    assert not driver.is_alive() and failure, "the capture did not fail after its worker was killed"
    return failure[0]
