"""Flash-attention-style causal kernel over kept heads; each reads its key/value head through kv_of_head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from workbench.kernels._triton_act import dot_precision


@triton.jit
def _attention_kernel(
    q_ptr, k_ptr, v_ptr, kv_ptr, z_ptr,
    T, DH, HK, scale,
    sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t, sz_b, sz_h, sz_t,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """z for BLOCK_M queries of one (batch, kept head): online softmax over key blocks up to the diagonal."""
    pid_m, pid_bh = tl.program_id(0), tl.program_id(1)
    b, h = pid_bh // HK, pid_bh % HK
    kvh = tl.load(kv_ptr + h)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    in_d = offs_d < DH
    q_rows = q_ptr + b.to(tl.int64) * sq_b + h * sq_h
    q = tl.load(
        q_rows + offs_m[:, None] * sq_t + offs_d[None, :],
        mask=(offs_m < T)[:, None] & in_d[None, :],
        other=0.0,
    )
    k_rows = k_ptr + b.to(tl.int64) * sk_b + kvh * sk_h
    v_rows = v_ptr + b.to(tl.int64) * sv_b + kvh * sv_h
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    hi = tl.minimum((pid_m + 1) * BLOCK_M, T)  # causal: no key beyond the block's last query
    for n0 in range(0, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        kv_mask = (offs_n < T)[:, None] & in_d[None, :]
        k = tl.load(k_rows + offs_n[:, None] * sk_t + offs_d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale  # [BLOCK_M, BLOCK_N], float32
        allowed = (offs_m[:, None] >= offs_n[None, :]) & (offs_n < T)[None, :]
        s = tl.where(allowed, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))  # finite: key 0 is in the first block for every row
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_rows + offs_n[:, None] * sv_t + offs_d[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    z = acc / l_i[:, None]
    z_rows = z_ptr + b.to(tl.int64) * sz_b + h * sz_h
    tl.store(
        z_rows + offs_m[:, None] * sz_t + offs_d[None, :],
        z.to(z_ptr.dtype.element_ty),
        mask=(offs_m < T)[:, None] & in_d[None, :],
    )


@dataclass(frozen=True)
class AttentionBlocks:
    """The launch: queries and keys per tile, warps, software-pipeline stages."""

    m: int = 64
    n: int = 64
    warps: int = 4
    stages: int | None = None  # None: Triton's default


def attention_blocks(q: torch.Tensor) -> AttentionBlocks:
    """The configuration for q [B, Hk, T, dh]."""
    return (
        AttentionBlocks() if q.is_cuda else AttentionBlocks(16, 16)
    )  # small tiles keep the interpreter quick


def triton_head_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_of_head: torch.Tensor,
    scale: float,
    blocks: AttentionBlocks | None = None,
) -> torch.Tensor:
    """z [B, Hk, T, dh]; dh is padded to a power of two (at least 16) inside the kernel with masks."""
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    B, HK, T, DH = q.shape
    z = torch.empty_like(q, memory_format=torch.contiguous_format)
    if z.numel() == 0:  # no empty launch grids
        return z
    cfg = blocks or attention_blocks(q)
    block_d = max(16, triton.next_power_of_2(DH))
    kv = kv_of_head.to(device=q.device, dtype=torch.int32).contiguous()
    grid = (triton.cdiv(T, cfg.m), B * HK)
    launch = {"num_warps": cfg.warps} | ({} if cfg.stages is None else {"num_stages": cfg.stages})
    _attention_kernel[grid](
        q, k, v, kv, z, T, DH, HK, float(scale),
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *z.stride()[:3],
        BLOCK_M=cfg.m, BLOCK_N=cfg.n, BLOCK_D=block_d, PRECISION=dot_precision(q.dtype), **launch,
    )  # fmt: skip
    return z
