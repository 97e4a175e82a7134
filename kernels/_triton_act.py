"""Activation functions inside Triton kernels, chosen by a constexpr code (activation.ACT_CODES)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _sigmoid(x):
    """exp of -|x| only: no overflow for large |x| (the interpreter warns on one)."""
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def apply_act(x, ACT: tl.constexpr):
    """relu (0), erf GELU (1), tanh GELU (2) or SiLU (3) of a float32 block."""
    if ACT == 0:
        y = tl.maximum(x, 0.0)
    elif ACT == 1:
        y = 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476))
    elif ACT == 2:
        z = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        y = x * _sigmoid(2.0 * z)  # 0.5 x (1 + tanh z) = x sigmoid(2z)
    else:
        y = x * _sigmoid(x)
    return y


def dot_precision(dtype) -> str:
    """tl.dot's input precision: exact float32 ("ieee") for float32 operands, so that a replayed layer
    agrees with the cached torch run (torch keeps TF32 off by default); half types use tensor cores."""
    import torch

    return "ieee" if dtype == torch.float32 else "tf32"
