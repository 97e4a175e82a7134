"""Replacing an MLP's output inside the model's forward pass: by a transcoder, or by zeros (ablation).

`mlp_replaced(handle, layer, replace)` registers two hooks for the duration of the block: one keeps
the MLP's input x, the other swaps the MLP's output for `replace(x, y)`. They are removed on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch

from workbench.models import ModelHandle
from workbench.models.hooks import hooks_attached
from workbench.transcoders.data import mlp_hooks
from workbench.transcoders.model import Encoded


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


def transcoder_replacement(
    transcoder, features: Sequence[tuple[int, float]] | None = None
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """ŷ of the transcoder, with `features` (index, scale) pairs scaled before decoding when given."""

    def replace(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return reconstruction(transcoder, x.float(), features)

    return replace


def reconstruction(transcoder, x: torch.Tensor, features: Sequence[tuple[int, float]] | None = None):
    """ŷ = z W_dec + b_dec (+ x W_skipᵀ) for inputs x [..., d_in]; with `features`, each listed feature's
    activation z_i is multiplied by its scale first (after the top-k choice of a topk transcoder, so the
    other features' activations stay as they were)."""
    if not features:
        return transcoder(x).y_hat
    flat = x.reshape(-1, x.shape[-1])
    encoded = transcoder.encode(flat)
    index = torch.tensor([i for i, _ in features], dtype=torch.long, device=flat.device)
    scale = torch.tensor([s for _, s in features], dtype=encoded.values.dtype, device=flat.device)
    if encoded.indices is None:  # relu: dense codes [T, width]
        values = encoded.values.clone()
        values[:, index] *= scale
    else:  # topk: codes [T, k] at encoded.indices
        factor = torch.ones(transcoder.width, dtype=encoded.values.dtype, device=flat.device)
        factor[index] = scale
        values = encoded.values * factor[encoded.indices]
    y_hat = transcoder.decode(Encoded(values, encoded.indices))
    if transcoder.W_skip is not None:
        y_hat = y_hat + flat @ transcoder.W_skip.T
    return y_hat.reshape(*x.shape[:-1], transcoder.cfg.d_out)


def zero_replacement(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(y)
