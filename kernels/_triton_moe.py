"""Triton MoE kernels: assignments sorted by expert, padded into blocks of BLOCK_T rows of one expert each.

Kernel 1 writes h = act(x gate^T) * (x up^T) per padded row (zero on padding rows), kernel 2 writes
weight * (h down^T) per row; a torch index_add then sums each token's rows (deterministic, no atomics).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from workbench.kernels._triton_act import apply_act, dot_precision
from workbench.kernels.activation import act_code
from workbench.kernels.moe_dispatch import route_assignments


@triton.jit
def _gate_up_kernel(
    x_ptr, gu_ptr, row_token, block_expert, h_ptr,
    D, DM, stride_xt, stride_ge, stride_gf, stride_ht,
    ACT: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    """h [BLOCK_T rows, BLOCK_F] of one block: its expert's gate and up rows against its tokens."""
    blk = tl.program_id(0)
    e = tl.load(block_expert + blk).to(tl.int64)
    offs_r = blk * BLOCK_T + tl.arange(0, BLOCK_T)
    tok = tl.load(row_token + offs_r)
    live = tok >= 0
    tok = tl.where(live, tok, 0).to(tl.int64)
    offs_f = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    in_f = offs_f < DM
    gate_rows = gu_ptr + e * stride_ge + offs_f[:, None].to(tl.int64) * stride_gf
    up_rows = gate_rows + DM * stride_gf
    acc_g = tl.zeros([BLOCK_T, BLOCK_F], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_T, BLOCK_F], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        in_d = offs_d < D
        x = tl.load(
            x_ptr + tok[:, None] * stride_xt + offs_d[None, :], mask=live[:, None] & in_d[None, :], other=0.0
        )
        wm = in_f[:, None] & in_d[None, :]
        wg = tl.load(gate_rows + offs_d[None, :], mask=wm, other=0.0)
        wu = tl.load(up_rows + offs_d[None, :], mask=wm, other=0.0)
        acc_g += tl.dot(x, tl.trans(wg.to(x.dtype)), input_precision=PRECISION)
        acc_u += tl.dot(x, tl.trans(wu.to(x.dtype)), input_precision=PRECISION)
    h = apply_act(acc_g, ACT) * acc_u
    h_rows = h_ptr + offs_r[:, None].to(tl.int64) * stride_ht + offs_f[None, :]
    tl.store(h_rows, h.to(h_ptr.dtype.element_ty), mask=in_f[None, :])


@triton.jit
def _down_kernel(
    h_ptr, down_ptr, row_weight, block_expert, out_ptr,
    D, DM, stride_ht, stride_de, stride_dd, stride_ot,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_F: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """out [BLOCK_T rows, BLOCK_D] = weight * (h down_e^T) for one block."""
    blk = tl.program_id(0)
    e = tl.load(block_expert + blk).to(tl.int64)
    offs_r = blk * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    in_d = offs_d < D
    acc = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
    for f0 in range(0, DM, BLOCK_F):
        offs_f = f0 + tl.arange(0, BLOCK_F)
        in_f = offs_f < DM
        h = tl.load(
            h_ptr + offs_r[:, None].to(tl.int64) * stride_ht + offs_f[None, :], mask=in_f[None, :], other=0.0
        )
        w = tl.load(
            down_ptr + e * stride_de + offs_d[:, None].to(tl.int64) * stride_dd + offs_f[None, :],
            mask=in_d[:, None] & in_f[None, :], other=0.0,
        )  # fmt: skip
        acc += tl.dot(h, tl.trans(w.to(h.dtype)), input_precision=PRECISION)
    acc *= tl.load(row_weight + offs_r).to(tl.float32)[:, None]
    out = out_ptr + offs_r[:, None].to(tl.int64) * stride_ot + offs_d[None, :]
    tl.store(out, acc, mask=in_d[None, :])


def padded_blocks(
    expert: torch.Tensor, token: torch.Tensor, weight: torch.Tensor, n_experts: int, block_t: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row_token [P] with -1 padding, row_weight [P], block_expert [P / block_t]) from sorted assignments."""
    counts = torch.bincount(expert, minlength=n_experts)
    padded = (counts + block_t - 1) // block_t * block_t
    first_row = torch.cumsum(padded, 0) - padded  # where each expert's rows begin
    first_live = torch.cumsum(counts, 0) - counts  # where each expert's assignments begin
    pos = first_row[expert] + torch.arange(expert.numel(), device=expert.device) - first_live[expert]
    P = int(padded.sum())
    row_token = torch.full((P,), -1, dtype=torch.int32, device=expert.device)
    row_token[pos] = token.to(torch.int32)
    row_weight = torch.zeros(P, dtype=torch.float32, device=expert.device)
    row_weight[pos] = weight.float()
    experts = torch.arange(n_experts, device=expert.device)
    block_expert = torch.repeat_interleave(experts, padded // block_t).to(torch.int32)
    return row_token, row_weight, block_expert


@dataclass(frozen=True)
class MoeBlocks:
    """The launch: rows per expert block, output and reduction columns per tile, warps."""

    t: int = 64
    f: int = 32
    d: int = 32
    warps: int = 4


def moe_blocks(x: torch.Tensor) -> MoeBlocks:
    """The launch for x [T, d]. Measured on an H200 at 512 tokens (RESULTS.md "GPU (H200)"): 128 rows x
    128 x 64 with 8 warps beat 64 x 32 x 32 (60 experts of 1408: 1.30 ms against 1.57; 8 of 14336: 1.79
    against 2.70). At 16 tokens the expert blocks are mostly padding, so the smaller block stays."""
    if not x.is_cuda:
        return MoeBlocks(16)  # small tiles keep the interpreter quick
    return MoeBlocks(128, 128, 64, 8) if x.shape[0] >= 512 else MoeBlocks()


def triton_moe(
    x: torch.Tensor,
    top_idx: torch.Tensor,
    top_w: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    act: str,
    config: MoeBlocks | None = None,
) -> torch.Tensor:
    """The Triton path of moe_dispatch: y [T, d]."""
    T, D = x.shape
    E, DM = down.shape[0], down.shape[2]
    cfg = config or moe_blocks(x)
    block_t = cfg.t
    row_token, row_weight, block_expert = padded_blocks(*route_assignments(top_idx, top_w), E, block_t)
    P = row_token.numel()
    y = torch.zeros(T + 1, D, dtype=torch.float32, device=x.device)  # row T collects the padding rows
    if P == 0:
        return y[:T].to(x.dtype)
    x, gate_up, down = x.contiguous(), gate_up.contiguous(), down.contiguous()
    h = torch.empty(P, DM, dtype=x.dtype, device=x.device)  # in the model's dtype, like the dense path
    blocks = P // block_t
    _gate_up_kernel[(blocks, triton.cdiv(DM, cfg.f))](
        x, gate_up, row_token, block_expert, h,
        D, DM, x.stride(0), gate_up.stride(0), gate_up.stride(1), h.stride(0),
        ACT=act_code(act), BLOCK_T=block_t, BLOCK_F=cfg.f, BLOCK_D=cfg.d, PRECISION=dot_precision(x.dtype),
        num_warps=cfg.warps,
    )  # fmt: skip
    out = torch.empty(P, D, dtype=torch.float32, device=x.device)
    _down_kernel[(blocks, triton.cdiv(D, cfg.f))](
        h, down, row_weight, block_expert, out,
        D, DM, h.stride(0), down.stride(0), down.stride(1), out.stride(0),
        BLOCK_T=block_t, BLOCK_D=cfg.f, BLOCK_F=cfg.d, PRECISION=dot_precision(x.dtype), num_warps=cfg.warps,
    )  # fmt: skip
    y.index_add_(0, torch.where(row_token < 0, T, row_token).long(), out)
    return y[:T].to(x.dtype)
