"""Triton kernels of the per-token sparse MLP.

Two kernels (any token count): a gather-dot for the activations a [T, k], then a weighted row sum of w_out.
One fused kernel (few tokens, decode): each program computes a block of a token's listed neurons from
their w_in (w_gate) rows, multiplies them into their w_out rows and adds the result into a float32 output
with atomic adds, so each listed row is read once and the MLP is one launch (plus zeroing the output
and, for half types, a cast).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl

from workbench.kernels._triton_act import apply_act
from workbench.kernels.activation import act_code
from workbench.kernels.dispatch import fused_mlp_pays, interpreting

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


def triton_sparse_mlp_two_kernels(
    x: torch.Tensor,
    p: MlpParams,
    idx: torch.Tensor,
    up: Blocks | None = None,
    down: Blocks | None = None,
) -> torch.Tensor:
    """Both kernels: the activations a [T, k] (float32), then the w_out row-sum, in x's dtype."""
    a = triton_gather_activations(x, p, idx, up)
    return triton_down_project(a, idx, p, down).to(x.dtype)


def triton_sparse_mlp(
    x: torch.Tensor,
    p: MlpParams,
    idx: torch.Tensor,
    up: Blocks | None = None,
    down: Blocks | None = None,
) -> torch.Tensor:
    """The per-token MLP on Triton: the fused kernel where it pays (dispatch.fused_mlp_pays: few tokens,
    few rows read), else the two kernels. Launch shapes given for the two kernels (up, down) choose them."""
    if up is None and down is None and fused_mlp_pays(*idx.shape, p.d_mlp):
        return triton_sparse_mlp_fused(x, p, idx)
    return triton_sparse_mlp_two_kernels(x, p, idx, up, down)


# ---- the fused kernel (few tokens) ----


@triton.jit
def _fence_gpu(token):
    """fence.acq_rel.gpu in every thread (CUDA's __threadfence): its earlier writes and atomics are seen
    GPU-wide before its later ones. `token` is an int32 scalar (inline asm needs an operand)."""
    return tl.inline_asm_elementwise(
        "fence.acq_rel.gpu;\n mov.u32 $0, $1;", "=r,r", [token], dtype=tl.int32, is_pure=False, pack=1
    )


@triton.jit
def _fused_mlp_kernel(
    x_ptr, idx_ptr, w_in_ptr, b_in_ptr, w_gate_ptr, w_out_ptr, b_out_ptr, acc_ptr, done_ptr, y_ptr,
    K, D, CHUNK, stride_xt, stride_it, stride_w, stride_g, stride_o,
    HAS_B_IN: tl.constexpr, HAS_B_OUT: tl.constexpr, GATED: tl.constexpr, ACT: tl.constexpr,
    BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr, ONE_TILE: tl.constexpr, CAST: tl.constexpr,
    FENCE: tl.constexpr,
):  # fmt: skip
    """acc[t] += sum over slots j of this program's chunk of a[t, j] w_out[idx[t, j]] (+ b_out in chunk 0),
    a[t, j] = act(x_t . w_in[idx[t, j]] + b_in) (gated: act(x_t . w_gate[..]) * (x_t . w_in[..] + b_in)).

    Only the listed rows are read (masked loads: a -1 slot reads nothing). ONE_TILE (BLOCK_D >= D): each
    step loads its w_in, w_gate and w_out rows whole and at once, the output row stays in registers across
    the chunk, and the program adds it into acc once; else each step walks d_model in BLOCK_D columns, up
    then down, with one atomic add per step and column block. The float32 atomic adds make the sum's order,
    hence its last bits, vary from run to run. CAST: the last program of token t to finish (a counter per
    token in done_ptr) writes acc[t] into y in y's dtype, so no cast kernel follows."""
    t = tl.program_id(0)
    j_start = tl.program_id(1) * CHUNK
    j_end = tl.minimum(j_start + CHUNK, K)
    x_row = x_ptr + t * stride_xt
    i_row = idx_ptr + t * stride_it
    acc_row = acc_ptr + t.to(tl.int64) * D
    first = tl.program_id(1) == 0
    if ONE_TILE:
        offs_d = tl.arange(0, BLOCK_D)
        in_d = offs_d < D
        x = tl.load(x_row + offs_d, mask=in_d, other=0.0).to(tl.float32)
        y = tl.zeros([BLOCK_D], dtype=tl.float32)
        for j0 in range(j_start, j_end, BLOCK_J):
            offs_j = j0 + tl.arange(0, BLOCK_J)
            idx = tl.load(i_row + offs_j, mask=offs_j < j_end, other=-1)
            valid = idx >= 0
            rows = tl.where(valid, idx, 0).to(tl.int64)
            m = valid[:, None] & in_d[None, :]
            w = tl.load(w_in_ptr + rows[:, None] * stride_w + offs_d[None, :], mask=m, other=0.0)
            wo = tl.load(w_out_ptr + rows[:, None] * stride_o + offs_d[None, :], mask=m, other=0.0)
            h = tl.sum(w.to(tl.float32) * x[None, :], axis=1)
            if HAS_B_IN:
                h += tl.load(b_in_ptr + rows, mask=valid, other=0.0).to(tl.float32)
            if GATED:
                g = tl.load(w_gate_ptr + rows[:, None] * stride_g + offs_d[None, :], mask=m, other=0.0)
                a = apply_act(tl.sum(g.to(tl.float32) * x[None, :], axis=1), ACT) * h
            else:
                a = apply_act(h, ACT)
            a = tl.where(valid, a, 0.0)
            y += tl.sum(a[:, None] * wo.to(tl.float32), axis=0)
        if HAS_B_OUT:
            y += tl.where(first, tl.load(b_out_ptr + offs_d, mask=in_d, other=0.0).to(tl.float32), 0.0)
        tl.atomic_add(acc_row + offs_d, y, mask=in_d, sem="relaxed")
    else:
        for j0 in range(j_start, j_end, BLOCK_J):
            offs_j = j0 + tl.arange(0, BLOCK_J)
            idx = tl.load(i_row + offs_j, mask=offs_j < j_end, other=-1)
            valid = idx >= 0
            rows = tl.where(valid, idx, 0).to(tl.int64)
            h = tl.zeros([BLOCK_J], dtype=tl.float32)
            hg = tl.zeros([BLOCK_J], dtype=tl.float32)
            for d0 in range(0, D, BLOCK_D):
                offs_d = d0 + tl.arange(0, BLOCK_D)
                in_d = offs_d < D
                x = tl.load(x_row + offs_d, mask=in_d, other=0.0).to(tl.float32)
                m = valid[:, None] & in_d[None, :]
                w = tl.load(w_in_ptr + rows[:, None] * stride_w + offs_d[None, :], mask=m, other=0.0)
                h += tl.sum(w.to(tl.float32) * x[None, :], axis=1)
                if GATED:
                    g = tl.load(w_gate_ptr + rows[:, None] * stride_g + offs_d[None, :], mask=m, other=0.0)
                    hg += tl.sum(g.to(tl.float32) * x[None, :], axis=1)
            if HAS_B_IN:
                h += tl.load(b_in_ptr + rows, mask=valid, other=0.0).to(tl.float32)
            if GATED:  # noqa: SIM108 -- a constexpr branch, compiled away
                a = apply_act(hg, ACT) * h
            else:
                a = apply_act(h, ACT)
            a = tl.where(valid, a, 0.0)
            bias_here = first & (j0 == j_start)
            for d0 in range(0, D, BLOCK_D):
                offs_d = d0 + tl.arange(0, BLOCK_D)
                in_d = offs_d < D
                m = valid[:, None] & in_d[None, :]
                wo = tl.load(w_out_ptr + rows[:, None] * stride_o + offs_d[None, :], mask=m, other=0.0)
                part = tl.sum(a[:, None] * wo.to(tl.float32), axis=0)
                if HAS_B_OUT:
                    b = tl.load(b_out_ptr + offs_d, mask=in_d, other=0.0).to(tl.float32)
                    part += tl.where(bias_here, b, 0.0)
                tl.atomic_add(acc_row + offs_d, part, mask=in_d, sem="relaxed")
    if CAST:
        token = tl.full([], 0, tl.int32)
        if FENCE:  # every thread's adds are visible GPU-wide before the program counts itself done
            token = _fence_gpu(token)
        tl.debug_barrier()
        done = tl.atomic_add(done_ptr + t + token, 1, sem="acq_rel", scope="gpu")
        if done == tl.num_programs(1) - 1:  # the last of token t's programs: acc[t] is complete
            if FENCE:
                token = _fence_gpu(token)
            for d0 in range(0, D, BLOCK_D):
                offs_c = d0 + tl.arange(0, BLOCK_D)
                in_c = offs_c < D
                v = tl.load(acc_row + offs_c + token, mask=in_c, other=0.0, cache_modifier=".cg")
                tl.store(y_ptr + t.to(tl.int64) * D + offs_c, v.to(y_ptr.dtype.element_ty), mask=in_c)


@dataclass(frozen=True)
class FusedBlocks:
    """The fused kernel's launch: slots per step (j), d_model columns per step (d; at least d_model: whole
    rows, one atomic add per program), warps, slots per program (chunk, rounded up to whole steps; 0: as
    many as fill one wave of per_sm programs on each multiprocessor), and whether the last program of each
    token casts the output (no cast kernel; half types only)."""

    j: int = 4
    d: int = 4096
    warps: int = 8
    chunk: int = 0
    cast: bool = False
    per_sm: int = 1

    def slots_per_program(self, T: int, k: int, sms: int) -> int:
        """Whole steps of j slots: the given chunk, or the fewest that keep T x ceil(k / chunk) programs
        within one wave of per_sm programs on each of `sms` multiprocessors."""
        if self.chunk:
            return triton.cdiv(self.chunk, self.j) * self.j
        per_token = max(1, (sms * self.per_sm) // max(T, 1))
        return triton.cdiv(triton.cdiv(max(k, 1), per_token), self.j) * self.j


def fused_blocks(T: int, k: int, D: int) -> FusedBlocks:
    """The fused kernel's configuration for T tokens of k slots over d_model D.

    From the launch sweep on an H200 (kernels/gpu_check.py --only sparse_mlp, RESULTS.md "GPU (H200)"),
    each launch timed as the whole fused call at 90 % skipped, gated SiLU, bfloat16: rows of 4096 are read
    whole, 2 slots a step, 4 warps, one wave of two programs per multiprocessor (7B-class, 1/4/16 tokens:
    0.015/0.034/0.108 ms; the first default, 4 slots and 8 warps, one program per multiprocessor,
    0.022/0.057/0.199); rows of 1024 or fewer, 4 slots and one step per program, 4 warps (SmolLM2:
    0.0067/0.0066/0.0075 ms, best or tied at each). Rows wider than 4096 walk 2048 columns a step
    (not measured)."""
    if D <= 1024:
        return FusedBlocks(4, triton.next_power_of_2(D), 4, chunk=4)
    if D <= 4096:
        return FusedBlocks(2, triton.next_power_of_2(D), 4, per_sm=2)
    return FusedBlocks(2, 2048, 4, per_sm=2)


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    """SMs of a CUDA device; 132 (an H100/H200) elsewhere, where the launch only has to be valid."""
    if device.type != "cuda":
        return 132
    return torch.cuda.get_device_properties(device).multi_processor_count


def triton_sparse_mlp_fused(
    x: torch.Tensor, p: MlpParams, idx: torch.Tensor, blocks: FusedBlocks | None = None
) -> torch.Tensor:
    """The fused kernel: y [T, d_model] in x's dtype, one launch over T x ceil(k / chunk) programs.

    The output is summed in a zeroed float32 buffer by atomic adds, then cast to x's dtype (by a cast
    kernel, or with blocks.cast by the last program of each token)."""
    T, k = idx.shape
    D = p.d_model
    b = blocks or fused_blocks(T, k, D)
    x, idx, w_in, w_out = _rows(x), _rows(idx), _rows(p.w_in), _rows(p.w_out)
    w_gate = w_in if p.w_gate is None else _rows(p.w_gate)
    if T == 0 or k == 0:  # no empty launch grids
        y = torch.zeros(T, D, dtype=x.dtype, device=x.device)
        return y if p.b_out is None else y.add_(p.b_out)
    block_d = min(b.d, triton.next_power_of_2(D))
    chunk = b.slots_per_program(T, k, _multiprocessors(x.device))
    cast = b.cast and x.dtype != torch.float32
    ws = torch.zeros(T * D + (T if cast else 0), dtype=torch.float32, device=x.device)
    acc = ws[: T * D]
    done = ws[T * D :].view(torch.int32) if cast else acc
    y = torch.empty(T, D, dtype=x.dtype, device=x.device) if cast else acc
    _fused_mlp_kernel[(T, triton.cdiv(k, chunk))](
        x, idx, w_in, p.b_in if p.b_in is not None else w_in, w_gate, w_out,
        p.b_out if p.b_out is not None else w_out, acc, done, y,
        k, D, chunk, x.stride(0), idx.stride(0), w_in.stride(0), w_gate.stride(0), w_out.stride(0),
        HAS_B_IN=p.b_in is not None, HAS_B_OUT=p.b_out is not None, GATED=p.w_gate is not None,
        ACT=act_code(p.act), BLOCK_J=b.j, BLOCK_D=block_d, ONE_TILE=block_d >= D, CAST=cast,
        FENCE=not interpreting(), num_warps=b.warps,
    )  # fmt: skip
    if cast:
        return y
    acc = acc.view(T, D)
    return acc if x.dtype == torch.float32 else acc.to(x.dtype)
