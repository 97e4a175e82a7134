"""Replacing an MLP's output inside the model's forward pass: by a transcoder, or by zeros (ablation).

`mlp_replaced(handle, layer, replace)` registers two hooks for the duration of the block: one keeps
the MLP's input x, the other swaps the MLP's output for `replace(x, y)`. They are removed on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from workbench.models import ModelHandle
from workbench.models.hooks import hooks_attached
from workbench.transcoders.data import mlp_hooks


@contextlib.contextmanager
def mlp_replaced(
    handle: ModelHandle, layer: int, replace: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> Iterator[None]:
    """Inside the block, layer `layer`'s MLP output y becomes replace(x, y) (x: the MLP's input)."""
    hook_in, hook_out = mlp_hooks(layer)
    points = handle.hook_points
    seen: dict[str, torch.Tensor] = {}

    def keep_input(module, inputs, output):
        seen["x"] = output

    def swap_output(module, inputs, output):
        return replace(seen.pop("x"), output).to(output.dtype)

    with hooks_attached([(points[hook_in], keep_input), (points[hook_out], swap_output)]):
        yield


def transcoder_replacement(transcoder) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def replace(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return transcoder(x.float()).y_hat

    return replace


def zero_replacement(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(y)
