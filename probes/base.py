"""What every probe shares: per-token field specs, hook attachment that always detaches, flattening.

A probe says which values to keep from a forward pass. During capture it is attached inside
`attached(...)`, a context manager that removes every hook on exit, also when an exception is raised.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
from torch import nn
from workbench.store import FieldSpec

from workbench.models import ModelHandle

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class Probe(Protocol):
    """Attach to a model, then hand over the values of the last forward pass, one row per token."""

    def fields(self, handle: ModelHandle, context: int) -> list[FieldSpec]: ...

    def hooks(self, handle: ModelHandle) -> list[tuple[nn.Module, Callable]]:
        """(module, forward-hook) pairs; a hook stores what it saw, `take` hands it over."""
        ...

    def take(self, batch: int, pos: int) -> dict[str, torch.Tensor]:
        """Values seen since the last call, as [batch * pos, *shape] per field."""
        ...


@contextlib.contextmanager
def attached(handle: ModelHandle, probes: list[Any]) -> Iterator[None]:
    """Register every probe's forward hooks for the duration of the block; always remove them."""
    handles = []
    try:
        for probe in probes:
            for module, hook in probe.hooks(handle):
                handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


def per_token(tensor: torch.Tensor, batch: int, pos: int) -> torch.Tensor:
    """One row per token: [batch, pos, ...] or [batch * pos, ...] → [batch * pos, ...]."""
    if tensor.dim() >= 2 and tensor.shape[0] == batch and tensor.shape[1] == pos:
        return tensor.reshape(batch * pos, *tensor.shape[2:])
    if tensor.shape[0] == batch * pos:
        return tensor
    raise ValueError(
        f"cannot read a per-token value from shape {tuple(tensor.shape)} (batch {batch}, pos {pos})"
    )
