"""Triton kernels of the per-token sparse MLP: a gather-dot for activations, a weighted row sum of w_out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl

from workbench.kernels._triton_act import apply_act
from workbench.kernels.activation import act_code

if TYPE_CHECKING:
    from workbench.kernels.sparse_mlp import MlpParams

BLOCK_J = 32  # Blocks' defaults: neuron slots per program (kernel 1) / per loop step (kernel 2)
BLOCK_D = 64  # d_model columns per loop step (kernel 1) / per program (kernel 2); see up_blocks, down_blocks


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
    K, D, CHUNK, stride_at, stride_it, stride_w, stride_yt, stride_ys,
    HAS_BIAS: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """y[s, t, d-block] = sum over slots j of chunk s of a[t, j] w_out[idx[t, j], d-block] (+ b_out): only
    the listed rows are read. With one chunk (CHUNK >= K) this is y itself; with several, the caller sums
    the float32 partials (the same order every run: no atomics)."""
    t = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    j_start = tl.program_id(2) * CHUNK
    j_end = tl.minimum(j_start + CHUNK, K)
    in_d = offs_d < D
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for j0 in range(j_start, j_end, BLOCK_J):
        offs_j = j0 + tl.arange(0, BLOCK_J)
        idx = tl.load(idx_ptr + t * stride_it + offs_j, mask=offs_j < j_end, other=-1)
        valid = idx >= 0
        rows = tl.where(valid, idx, 0).to(tl.int64)
        a = tl.load(a_ptr + t * stride_at + offs_j, mask=valid, other=0.0).to(tl.float32)
        w = tl.load(
            w_out_ptr + rows[:, None] * stride_w + offs_d[None, :],
            mask=valid[:, None] & in_d[None, :],
            other=0.0,
        )
        acc += tl.sum(a[:, None] * w.to(tl.float32), axis=0)
    if HAS_BIAS:  # noqa: SIM102 -- a constexpr branch around a run-time one (in the first chunk only)
        if tl.program_id(2) == 0:
            acc += tl.load(b_out_ptr + offs_d, mask=in_d, other=0.0).to(tl.float32)
    y = y_ptr + tl.program_id(2) * stride_ys + t * stride_yt + offs_d
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=in_d)


def _rows(w: torch.Tensor) -> torch.Tensor:
    """The kernels step through a row with unit stride."""
    return w if w.stride(-1) == 1 else w.contiguous()


@dataclass(frozen=True)
class Blocks:
    """A launch configuration: slots and d_model columns per tile, warps, and (down only) slot chunks."""

    j: int = BLOCK_J
    d: int = BLOCK_D
    warps: int = 4
    split: int = 1  # chunks of the slots summed apart (down projection only): more programs when T is small


def up_blocks(T: int, k: int, D: int) -> Blocks:
    """The gather-dot kernel's configuration for T tokens of k slots over d_model D.

    From the launch sweep on an H200 (kernels/gpu_check.py, RESULTS.md "GPU (H200)"): the kernel is bound
    by the bytes each program has in flight, so few slots and long rows win. One token of a 4096-wide
    model, 1101 slots: 4 x 2048 with 8 warps 0.010 ms (32 x 64, the first launch: 0.125 ms); 4 x 1024
    with 4 warps was best or tied at 16 tokens and on SmolLM2's 576-wide rows."""
    return Blocks(4, 2048, 8) if T == 1 and D > 1024 else Blocks(4, 1024, 4)


def down_blocks(T: int, k: int, D: int) -> Blocks:
    """The row-sum kernel's configuration for T tokens of k slots over d_model D.

    From the same sweep: 64 slots x 64 columns per step, the slots cut into 8 chunks summed apart (more
    programs when T is small): best or tied at 1 and 16 tokens on both shapes (7B, one token: 0.013 ms
    against 0.040 for one chunk of 32 x 64). Fewer than 8 x 64 slots give fewer chunks by themselves."""
    return Blocks(64, 64, 4, 8)


def triton_down_project(
    a_sel: torch.Tensor, idx: torch.Tensor, p: MlpParams, blocks: Blocks | None = None
) -> torch.Tensor:
    """Kernel 2 alone: y [T, d_model] of a_sel [T, k] and idx [T, k] (sparse_mlp.down_project_per_token)."""
    T, k = idx.shape
    D = p.d_model
    b = blocks or down_blocks(T, k, D)
    a_sel, idx, w_out = _rows(a_sel), _rows(idx), _rows(p.w_out)
    y = torch.empty(T, D, dtype=a_sel.dtype, device=a_sel.device)
    if T == 0:  # no empty launch grids
        return y
    chunk = triton.cdiv(triton.cdiv(max(k, 1), b.split), b.j) * b.j  # whole tiles of slots per chunk
    split = triton.cdiv(max(k, 1), chunk)
    has_bias = p.b_out is not None
    out = y if split == 1 else torch.empty(split, T, D, dtype=torch.float32, device=y.device)
    _gather_sum_kernel[(T, triton.cdiv(D, b.d), split)](
        a_sel, idx, w_out, p.b_out if has_bias else w_out, out,
        k, D, chunk, a_sel.stride(0), idx.stride(0), w_out.stride(0), out.stride(-2),
        out.stride(0) if split > 1 else 0,
        HAS_BIAS=has_bias, BLOCK_J=b.j, BLOCK_D=b.d, num_warps=b.warps,
    )  # fmt: skip
    return y if split == 1 else y.copy_(out.sum(0))  # chunks summed in a fixed order


def triton_gather_activations(
    x: torch.Tensor, p: MlpParams, idx: torch.Tensor, blocks: Blocks | None = None
) -> torch.Tensor:
    """Kernel 1 alone: a [T, k] in float32, each token's listed neurons from only their w_in (w_gate) rows."""
    T, k = idx.shape
    b = blocks or up_blocks(T, k, p.d_model)
    x, idx, w_in = _rows(x), _rows(idx), _rows(p.w_in)
    w_gate = w_in if p.w_gate is None else _rows(p.w_gate)
    a = torch.empty(T, k, dtype=torch.float32, device=x.device)
    if a.numel() == 0:  # no empty launch grids
        return a
    has_bias = p.b_in is not None
    _gather_dot_kernel[(T, triton.cdiv(k, b.j))](
        x, idx, w_in, p.b_in if has_bias else w_in, w_gate, a,
        k, p.d_model, x.stride(0), idx.stride(0), w_in.stride(0), w_gate.stride(0), a.stride(0),
        HAS_BIAS=has_bias, GATED=p.w_gate is not None, ACT=act_code(p.act), BLOCK_J=b.j, BLOCK_D=b.d,
        num_warps=b.warps,
    )  # fmt: skip
    return a


def triton_sparse_mlp(
    x: torch.Tensor,
    p: MlpParams,
    idx: torch.Tensor,
    up: Blocks | None = None,
    down: Blocks | None = None,
) -> torch.Tensor:
    """Both kernels: the activations a [T, k] (float32), then the w_out row-sum, in x's dtype."""
    a = triton_gather_activations(x, p, idx, up)
    return triton_down_project(a, idx, p, down).to(x.dtype)
