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

from workbench.models import ModelHandle
from workbench.models.hooks import hooks_attached
from workbench.store import FieldSpec


class Probe(Protocol):
    """Attach to a model, then hand over the values of the last forward pass, one row per token."""

    def fields(self, handle: ModelHandle, context: int) -> list[FieldSpec]: ...

    def hooks(self, handle: ModelHandle) -> list[tuple[nn.Module, Callable]]:
        """(module, forward-hook) pairs; a hook stores what it saw, `take` hands it over."""
        ...

    def take(self, batch: int, pos: int) -> dict[str, torch.Tensor]:
        """Values seen since the last call, as [batch * pos, *shape] per field."""
        ...


class ForwardDone(Exception):
    """Raised by the last probe hook of a forward pass: nothing after it is needed (no unembedding)."""


@contextlib.contextmanager
def attached(handle: ModelHandle, probes: list[Any], stop_when_done: bool = False) -> Iterator[None]:
    """Register every probe's forward hooks for the duration of the block; always remove them.

    With `stop_when_done`, the hook that completes a forward pass's set raises ForwardDone, so the
    layers after the last captured value (and the unembedding) are never computed. Each hook must
    fire once per forward pass, as every probe's hooks do.
    """
    pairs = [pair for probe in probes for pair in probe.hooks(handle)]
    fired: set[int] = set()

    def counted(index: int, hook: Callable) -> Callable:
        def wrapper(module, inputs, output):
            hook(module, inputs, output)
            fired.add(index)
            if len(fired) == len(pairs):
                fired.clear()
                raise ForwardDone

        return wrapper

    with hooks_attached(
        (module, counted(i, hook) if stop_when_done else hook) for i, (module, hook) in enumerate(pairs)
    ):
        yield


def per_token(tensor: torch.Tensor, batch: int, pos: int) -> torch.Tensor:
    """One row per token: [batch, pos, ...] or [batch * pos, ...] → [batch * pos, ...]."""
    if tensor.dim() >= 2 and tensor.shape[0] == batch and tensor.shape[1] == pos:
        return tensor.reshape(batch * pos, *tensor.shape[2:])
    if tensor.shape[0] == batch * pos:
        return tensor
    raise ValueError(
        f"cannot read a per-token value from shape {tuple(tensor.shape)} (batch {batch}, pos {pos})"
    )


def probing_pass(handle: ModelHandle, hooks: list[tuple[nn.Module, Callable]]) -> None:
    """One forward pass over a 2-token input with temporary hooks: how probes learn shapes and paths."""
    with hooks_attached(hooks), torch.inference_mode():
        handle.logits(torch.zeros(1, 2, dtype=torch.long))
