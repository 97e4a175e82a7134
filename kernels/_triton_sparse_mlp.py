"""Triton kernels of the per-token sparse MLP: a gather-dot for activations, a weighted row sum of w_out."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl

from workbench.kernels._triton_act import apply_act
from workbench.kernels.activation import act_code

if TYPE_CHECKING:
    from workbench.kernels.sparse_mlp import MlpParams

BLOCK_J = 32  # neuron slots per program (kernel 1) / per loop step (kernel 2)
BLOCK_D = 64  # d_model columns per loop step (kernel 1) / per program (kernel 2)


@triton.jit
def _gather_dot_kernel(
    x_ptr, idx_ptr, w_in_ptr, b_in_ptr, w_gate_ptr, a_ptr,
    K, D, stride_xt, stride_it, stride_w, stride_g, stride_at,
    HAS_BIAS: tl.constexpr, GATED: tl.constexpr, ACT: tl.constexpr,
    BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """a[t, j] for one token t and BLOCK_J of its slots: only the rows idx[t, j] of w_in (w_gate) are read."""
    t = tl.program_id(0)
    offs_j = tl.program_id(1) * BLOCK_J + tl.arange(0, BLOCK_J)
    in_k = offs_j < K
    idx = tl.load(idx_ptr + t * stride_it + offs_j, mask=in_k, other=-1)
    valid = idx >= 0
    rows = tl.where(valid, idx, 0).to(tl.int64)
    acc = tl.zeros([BLOCK_J], dtype=tl.float32)
    acc_gate = tl.zeros([BLOCK_J], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        in_d = offs_d < D
        x = tl.load(x_ptr + t * stride_xt + offs_d, mask=in_d, other=0.0).to(tl.float32)
        m = valid[:, None] & in_d[None, :]
        w = tl.load(w_in_ptr + rows[:, None] * stride_w + offs_d[None, :], mask=m, other=0.0)
        acc += tl.sum(w.to(tl.float32) * x[None, :], axis=1)
        if GATED:
            g = tl.load(w_gate_ptr + rows[:, None] * stride_g + offs_d[None, :], mask=m, other=0.0)
            acc_gate += tl.sum(g.to(tl.float32) * x[None, :], axis=1)
    if HAS_BIAS:
        acc += tl.load(b_in_ptr + rows, mask=valid, other=0.0).to(tl.float32)
    if GATED:  # noqa: SIM108 -- a constexpr branch, compiled away
        a = apply_act(acc_gate, ACT) * acc
    else:
        a = apply_act(acc, ACT)
    a = tl.where(valid, a, 0.0)
    tl.store(a_ptr + t * stride_at + offs_j, a, mask=in_k)


@triton.jit
def _gather_sum_kernel(
    a_ptr, idx_ptr, w_out_ptr, b_out_ptr, y_ptr,
    K, D, stride_at, stride_it, stride_w, stride_yt,
    HAS_BIAS: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """y[t, d-block] = sum_j a[t, j] w_out[idx[t, j], d-block] (+ b_out): only the listed rows are read."""
    t = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    in_d = offs_d < D
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for j0 in range(0, K, BLOCK_J):
        offs_j = j0 + tl.arange(0, BLOCK_J)
        idx = tl.load(idx_ptr + t * stride_it + offs_j, mask=offs_j < K, other=-1)
        valid = idx >= 0
        rows = tl.where(valid, idx, 0).to(tl.int64)
        a = tl.load(a_ptr + t * stride_at + offs_j, mask=valid, other=0.0).to(tl.float32)
        w = tl.load(
            w_out_ptr + rows[:, None] * stride_w + offs_d[None, :],
            mask=valid[:, None] & in_d[None, :],
            other=0.0,
        )
        acc += tl.sum(a[:, None] * w.to(tl.float32), axis=0)
    if HAS_BIAS:
        acc += tl.load(b_out_ptr + offs_d, mask=in_d, other=0.0).to(tl.float32)
    tl.store(y_ptr + t * stride_yt + offs_d, acc.to(y_ptr.dtype.element_ty), mask=in_d)


def _rows(w: torch.Tensor) -> torch.Tensor:
    """The kernels step through a row with unit stride."""
    return w if w.stride(-1) == 1 else w.contiguous()


def triton_down_project(a_sel: torch.Tensor, idx: torch.Tensor, p: MlpParams) -> torch.Tensor:
    """Kernel 2 alone: y [T, d_model] of a_sel [T, k] and idx [T, k] (sparse_mlp.down_project_per_token)."""
    T, k = idx.shape
    D = p.d_model
    a_sel, idx, w_out = _rows(a_sel), _rows(idx), _rows(p.w_out)
    y = torch.empty(T, D, dtype=a_sel.dtype, device=a_sel.device)
    if T == 0:  # no empty launch grids
        return y
    has_bias = p.b_out is not None
    _gather_sum_kernel[(T, triton.cdiv(D, BLOCK_D))](
        a_sel, idx, w_out, p.b_out if has_bias else w_out, y,
        k, D, a_sel.stride(0), idx.stride(0), w_out.stride(0), y.stride(0),
        HAS_BIAS=has_bias, BLOCK_J=BLOCK_J, BLOCK_D=BLOCK_D,
    )  # fmt: skip
    return y


def triton_sparse_mlp(x: torch.Tensor, p: MlpParams, idx: torch.Tensor) -> torch.Tensor:
    """Both kernels: a [T, k] in float32 from the gathered w_in (w_gate) rows, then the w_out row-sum."""
    T, k = idx.shape
    x, idx, w_in = _rows(x), _rows(idx), _rows(p.w_in)
    w_gate = w_in if p.w_gate is None else _rows(p.w_gate)
    a = torch.empty(T, k, dtype=torch.float32, device=x.device)
    if a.numel() == 0:  # no empty launch grids
        return triton_down_project(a, idx, p).to(x.dtype)
    has_bias = p.b_in is not None
    _gather_dot_kernel[(T, triton.cdiv(k, BLOCK_J))](
        x, idx, w_in, p.b_in if has_bias else w_in, w_gate, a,
        k, p.d_model, x.stride(0), idx.stride(0), w_in.stride(0), w_gate.stride(0), a.stride(0),
        HAS_BIAS=has_bias, GATED=p.w_gate is not None, ACT=act_code(p.act), BLOCK_J=BLOCK_J, BLOCK_D=BLOCK_D,
    )  # fmt: skip
    return triton_down_project(a, idx, p).to(x.dtype)
