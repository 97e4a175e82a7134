"""Triton kernels for pruned weights: N:M from the compressed form, and block-skipping unstructured."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl

from workbench.kernels._triton_act import dot_precision

if TYPE_CHECKING:
    from workbench.kernels.masked_matmul import BlockMaskedWeight, NMWeight


@triton.jit
def _nm_kernel(
    x_ptr, val_ptr, col_ptr, b_ptr, y_ptr,
    T, N, K, stride_xt, stride_v, stride_yt,
    HAS_BIAS: tl.constexpr, NKEEP: tl.constexpr, M: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """y tile [BLOCK_T, BLOCK_N]: each step rebuilds a dense [BLOCK_N, BLOCK_G*M] weight tile in registers
    from the NKEEP slots per group (values + offsets) and multiplies it with tl.dot."""
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    in_t, in_n = offs_t < T, offs_n < N
    G = K // M
    within = tl.arange(0, M)
    acc = tl.zeros([BLOCK_T, BLOCK_N], dtype=tl.float32)
    for g0 in range(0, G, BLOCK_G):
        offs_g = g0 + tl.arange(0, BLOCK_G)
        m2 = in_n[:, None] & (offs_g < G)[None, :]
        tile = tl.zeros([BLOCK_N, BLOCK_G, M], dtype=tl.float32)
        for s in tl.static_range(NKEEP):
            slot = offs_n[:, None].to(tl.int64) * stride_v + offs_g[None, :] * NKEEP + s
            v = tl.load(val_ptr + slot, mask=m2, other=0.0).to(tl.float32)
            c = tl.load(col_ptr + slot, mask=m2, other=0).to(tl.int32)
            tile += tl.where(c[:, :, None] == within[None, None, :], v[:, :, None], 0.0)
        w = tl.reshape(tile, [BLOCK_N, BLOCK_G * M])
        offs_k = g0 * M + tl.arange(0, BLOCK_G * M)
        x = tl.load(
            x_ptr + offs_t[:, None].to(tl.int64) * stride_xt + offs_k[None, :],
            mask=in_t[:, None] & (offs_k < K)[None, :], other=0.0,
        )  # fmt: skip
        acc += tl.dot(x, tl.trans(w.to(x.dtype)), input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=in_n, other=0.0).to(tl.float32)[None, :]
    y = y_ptr + offs_t[:, None].to(tl.int64) * stride_yt + offs_n[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=in_t[:, None] & in_n[None, :])


@triton.jit
def _nm_gemv_kernel(
    x_ptr, val_ptr, col_ptr, b_ptr, y_ptr,
    N, S, stride_xt, stride_v, stride_yt,
    HAS_BIAS: tl.constexpr, NKEEP: tl.constexpr, M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    """y[t, n-block] for one token t, straight from the compressed rows: each kept value meets the input
    it multiplies, x[t, group * M + offset], gathered (x is small and stays in cache). Every weight byte is
    read once, coalesced, and no dense tile is rebuilt: the kernel for a few tokens (decode)."""
    t = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    in_n = offs_n < N
    rows = offs_n[:, None].to(tl.int64) * stride_v
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for s0 in range(0, S, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        m2 = in_n[:, None] & (offs_s < S)[None, :]
        v = tl.load(val_ptr + rows + offs_s[None, :], mask=m2, other=0.0).to(tl.float32)
        c = tl.load(col_ptr + rows + offs_s[None, :], mask=m2, other=0).to(tl.int32)
        k = (offs_s // NKEEP)[None, :] * M + c  # < K: a padding slot (value 0, offset 0) reads a real x
        x = tl.load(x_ptr + t * stride_xt + k, mask=m2, other=0.0).to(tl.float32)
        acc += tl.sum(v * x, axis=1)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=in_n, other=0.0).to(tl.float32)
    tl.store(y_ptr + t * stride_yt + offs_n, acc.to(y_ptr.dtype.element_ty), mask=in_n)


@triton.jit
def _block_masked_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, tile_ptr, tile_cols,
    T, N, K, stride_xt, stride_w, stride_yt,
    HAS_BIAS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    """y tile [BLOCK_T, BLOCK_N] summed over only the occupied weight tiles of its tile row."""
    pid_n = tl.program_id(1)
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    in_t, in_n = offs_t < T, offs_n < N
    start = tl.load(tile_ptr + pid_n)
    end = tl.load(tile_ptr + pid_n + 1)
    acc = tl.zeros([BLOCK_T, BLOCK_N], dtype=tl.float32)
    for i in range(start, end):
        offs_k = tl.load(tile_cols + i) * BLOCK_K + tl.arange(0, BLOCK_K)
        in_k = offs_k < K
        x = tl.load(
            x_ptr + offs_t[:, None].to(tl.int64) * stride_xt + offs_k[None, :],
            mask=in_t[:, None] & in_k[None, :], other=0.0,
        )  # fmt: skip
        w = tl.load(
            w_ptr + offs_n[:, None].to(tl.int64) * stride_w + offs_k[None, :],
            mask=in_n[:, None] & in_k[None, :], other=0.0,
        )  # fmt: skip
        acc += tl.dot(x, tl.trans(w.to(x.dtype)), input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=in_n, other=0.0).to(tl.float32)[None, :]
    y = y_ptr + offs_t[:, None].to(tl.int64) * stride_yt + offs_n[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=in_t[:, None] & in_n[None, :])


def _block_t(T: int) -> int:
    """Token tile: a power of two in 16..64 (tl.dot needs at least 16)."""
    return min(64, max(16, triton.next_power_of_2(T)))


@dataclass(frozen=True)
class GemvBlocks:
    """The few-token N:M kernel's launch: output rows and compressed slots per tile, and warps."""

    n: int = 16
    s: int = 128
    warps: int = 4


GEMV_MAX_TOKENS = 16  # up to this many tokens the N:M path reads the compressed rows once per token


def triton_nm_matmul(
    x: torch.Tensor, nmw: NMWeight, bias: torch.Tensor | None, gemv: GemvBlocks | None = None
) -> torch.Tensor:
    """x [T, K] @ dense(nmw)^T + bias from the compressed values; m must be a power of two.

    Up to GEMV_MAX_TOKENS tokens (or with `gemv` given), one program per token and block of rows
    (`_nm_gemv_kernel`); more tokens rebuild dense weight tiles for tl.dot (`_nm_kernel`).
    """
    if nmw.m & (nmw.m - 1):
        raise ValueError(f"the Triton N:M kernel needs m a power of two, not {nmw.m}; use backend='torch'")
    x = x.contiguous()
    T, N = x.shape[0], nmw.values.shape[0]
    y = torch.empty(T, N, dtype=x.dtype, device=x.device)
    if T == 0:
        return y
    if gemv is not None or T <= GEMV_MAX_TOKENS:
        g = gemv or GemvBlocks()
        _nm_gemv_kernel[(T, triton.cdiv(N, g.n))](
            x, nmw.values, nmw.cols, bias if bias is not None else nmw.values, y,
            N, nmw.values.shape[1], x.stride(0), nmw.values.stride(0), y.stride(0),
            HAS_BIAS=bias is not None, NKEEP=nmw.n, M=nmw.m, BLOCK_N=g.n, BLOCK_S=g.s, num_warps=g.warps,
        )  # fmt: skip
        return y
    block_t, block_n, block_g = _block_t(T), 32, max(1, 64 // nmw.m)  # 64 inputs a step
    grid = (triton.cdiv(T, block_t), triton.cdiv(N, block_n))
    _nm_kernel[grid](
        x, nmw.values, nmw.cols, bias if bias is not None else nmw.values, y,
        T, N, nmw.K, x.stride(0), nmw.values.stride(0), y.stride(0),
        HAS_BIAS=bias is not None, NKEEP=nmw.n, M=nmw.m, BLOCK_T=block_t, BLOCK_N=block_n, BLOCK_G=block_g,
        PRECISION=dot_precision(x.dtype),
    )  # fmt: skip
    return y


def triton_block_masked_matmul(
    x: torch.Tensor, bw: BlockMaskedWeight, bias: torch.Tensor | None
) -> torch.Tensor:
    """x [T, K] @ bw.weight^T + bias, reading only occupied weight tiles."""
    x = x.contiguous()
    T, (N, K) = x.shape[0], bw.weight.shape
    y = torch.empty(T, N, dtype=x.dtype, device=x.device)
    if T == 0:
        return y
    block_t = _block_t(T)
    grid = (triton.cdiv(T, block_t), triton.cdiv(N, bw.block_n))
    _block_masked_kernel[grid](
        x, bw.weight, bias if bias is not None else bw.weight, y, bw.tile_ptr, bw.tile_cols,
        T, N, K, x.stride(0), bw.weight.stride(0), y.stride(0),
        HAS_BIAS=bias is not None, BLOCK_T=block_t, BLOCK_N=bw.block_n, BLOCK_K=bw.block_k,
        PRECISION=dot_precision(x.dtype),
    )  # fmt: skip
    return y
