"""A probe that stops one Ray worker mid-range, for the kill-and-resume tests of sharded captures.
Imported by name (`from gated_probe import GatedProbe`, as tiny_checkpoints is); Ray's workers get it by
value, since they cannot import the tests folder."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

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
