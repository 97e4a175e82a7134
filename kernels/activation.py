"""MLP activation functions by their Hugging Face names, for the torch paths and as Triton codes."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

# The integer each name has inside the Triton kernels (a constexpr branch there, see _triton_act.py).
ACT_CODES = {"relu": 0, "gelu": 1, "gelu_new": 2, "gelu_pytorch_tanh": 2, "silu": 3}

_TORCH: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {
    0: F.relu,
    1: F.gelu,
    2: lambda x: F.gelu(x, approximate="tanh"),
    3: F.silu,
}


def act_code(name: str) -> int:
    """The Triton code of an activation name; a clear error for an unknown one."""
    try:
        return ACT_CODES[name]
    except KeyError:
        raise ValueError(
            f"unknown MLP activation {name!r}; the kernels know {sorted(ACT_CODES)} "
            "(gelu_new and gelu_pytorch_tanh are the tanh-approximate GELU)"
        ) from None


def activation_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The torch function of an activation name."""
    return _TORCH[act_code(name)]
