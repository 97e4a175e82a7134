"""Matmuls with pruned weights: y = x (w * mask)^T + b, w [N_out, K_in] in nn.Linear layout.

Two storage forms, each built once from (w, mask):
- `NMWeight` for N:M masks (at most n kept in every m consecutive inputs of a row): only the kept values
  and their in-group offsets, so a GPU kernel reads n/m of the dense weight.
- `BlockMaskedWeight` for unstructured masks: the masked weight plus which tiles hold any nonzero, so
  the GPU kernel skips empty tiles.
On the CPU both run a dense GEMM on the masked weight: that is the fastest thing there (sparse formats
only win at sparsities far beyond these), so the CPU paths buy no speed, only correctness.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from workbench.kernels.dispatch import triton_wins_block_masked, triton_wins_nm, use_triton


def masked_matmul_reference(
    x: torch.Tensor, w: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Oracle: x [..., K] @ (w * mask)^T [K, N] + bias."""
    y = x @ (w * mask.to(w.dtype)).T
    return y if bias is None else y + bias


@dataclass(eq=False)
class NMWeight:
    """An N:M-sparse weight: per row, n slots for each group of m inputs (zero-padded where fewer kept)."""

    values: torch.Tensor  # [N, K*n/m]: slot s of group g at column g*n + s
    cols: torch.Tensor  # uint8 [N, K*n/m] (int16 if m > 256): the slot's offset inside its group, 0..m-1
    K: int
    n: int
    m: int
    _dense: torch.Tensor | None = field(default=None, repr=False)

    def dense(self) -> torch.Tensor:
        """The masked weight [N, K], decompressed once and cached (the CPU path's GEMM operand)."""
        if self._dense is None:
            N, G = self.values.shape[0], self.K // self.m
            w = torch.zeros(N, G, self.m, dtype=self.values.dtype, device=self.values.device)
            # scatter_add: a padding slot (value 0, offset 0) must not overwrite a kept value at offset 0
            w.scatter_add_(2, self.cols.view(N, G, self.n).long(), self.values.view(N, G, self.n))
            self._dense = w.view(N, self.K)
        return self._dense


def nm_compress(w: torch.Tensor, mask: torch.Tensor, n: int, m: int) -> NMWeight:
    """Compress w * mask ([N, K], mask bool) into n slots per m inputs; a clear error if mask is not n:m."""
    N, K = w.shape
    if mask.shape != w.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must match w {tuple(w.shape)}")
    if not 0 < n <= m or K % m:
        raise ValueError(f"need 0 < n <= m and K = {K} a multiple of m = {m} (got n = {n})")
    groups = mask.bool().view(N, K // m, m)
    counts = groups.sum(-1)
    if (counts > n).any():
        row, group = (counts > n).nonzero()[0].tolist()
        raise ValueError(
            f"the mask is not {n}:{m}: row {row}, inputs {group * m}..{group * m + m - 1} keep "
            f"{counts[row, group].item()} > {n}; prune it to {n}:{m} first or use BlockMaskedWeight"
        )
    # kept offsets first, in order (stable sort of "not kept"), then padding slots
    order = torch.argsort((~groups).to(torch.int8), dim=-1, stable=True)[..., :n]  # [N, G, n]
    kept = groups.gather(-1, order)
    values = torch.where(kept, w.view(N, K // m, m).gather(-1, order), 0.0).reshape(N, -1)
    # one byte per slot while offsets fit: on a GPU the kernel reads these beside the values
    cols = torch.where(kept, order, 0).to(torch.uint8 if m <= 256 else torch.int16).reshape(N, -1)
    return NMWeight(values.contiguous(), cols.contiguous(), K, n, m)


def nm_matmul(
    x: torch.Tensor, nmw: NMWeight, bias: torch.Tensor | None = None, backend: str | None = None
) -> torch.Tensor:
    """y [..., N] = x [..., K] @ dense(nmw)^T + bias; on a GPU it reads only the compressed weight."""
    tokens = x.numel() // max(1, x.shape[-1])
    if use_triton(x, nmw.values, backend=backend, triton_wins=triton_wins_nm(tokens, nmw.n, nmw.m)):
        from workbench.kernels._triton_masked_matmul import triton_nm_matmul

        flat = x.reshape(-1, x.shape[-1])
        return triton_nm_matmul(flat, nmw, bias).view(*x.shape[:-1], nmw.values.shape[0])
    return F.linear(x, nmw.dense(), bias)


@dataclass(eq=False)
class BlockMaskedWeight:
    """An unstructured-masked weight and, per row of tiles, the column tiles holding any kept weight."""

    weight: torch.Tensor  # [N, K]: w * mask, contiguous
    occupancy: torch.Tensor  # bool [ceil(N/block_n), ceil(K/block_k)]
    tile_ptr: torch.Tensor  # int32 [ceil(N/block_n) + 1]: tile row r has tile_cols[tile_ptr[r]:tile_ptr[r+1]]
    tile_cols: torch.Tensor  # int32 [occupied tiles]
    block_n: int
    block_k: int
    live_tiles: float = 1.0  # the share of tiles holding any kept weight (the dispatcher reads it)

    @classmethod
    def from_mask(
        cls, w: torch.Tensor, mask: torch.Tensor, block_n: int = 32, block_k: int = 32
    ) -> BlockMaskedWeight:
        """Mask w once and find its occupied tiles (block sizes are powers of two, at least 16 for tl.dot)."""
        if mask.shape != w.shape:
            raise ValueError(f"mask {tuple(mask.shape)} must match w {tuple(w.shape)}")
        if any(b < 16 or b & (b - 1) for b in (block_n, block_k)):
            raise ValueError(f"tile sides must be powers of two >= 16, not {block_n} x {block_k}")
        N, K = w.shape
        tn, tk = -(-N // block_n), -(-K // block_k)
        padded = torch.zeros(tn * block_n, tk * block_k, dtype=torch.bool, device=w.device)
        padded[:N, :K] = mask.bool()
        occupancy = padded.view(tn, block_n, tk, block_k).any(3).any(1)
        counts = occupancy.sum(1)
        tile_ptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(torch.int32)
        tile_cols = occupancy.nonzero()[:, 1].to(torch.int32)  # row-major: grouped by tile row
        weight = (w * mask.to(w.dtype)).contiguous()
        live = float(counts.sum()) / max(1, occupancy.numel())
        return cls(weight, occupancy, tile_ptr, tile_cols, block_n, block_k, live)


def block_masked_matmul(
    x: torch.Tensor, bw: BlockMaskedWeight, bias: torch.Tensor | None = None, backend: str | None = None
) -> torch.Tensor:
    """y [..., N] = x [..., K] @ bw.weight^T + bias; on a GPU all-zero weight tiles are never read."""
    tokens = x.numel() // max(1, x.shape[-1])
    if use_triton(x, bw.weight, backend=backend, triton_wins=triton_wins_block_masked(tokens, bw.live_tiles)):
        from workbench.kernels._triton_masked_matmul import triton_block_masked_matmul

        flat = x.reshape(-1, x.shape[-1])
        return triton_block_masked_matmul(flat, bw, bias).view(*x.shape[:-1], bw.weight.shape[0])
    return F.linear(x, bw.weight, bias)


def semi_structured_2to4(w_masked: torch.Tensor) -> torch.Tensor | None:
    """torch's 2:4 semi-structured sparse tensor of a 2:4-masked weight (the GPU baseline), or None.

    None on the CPU and wherever torch refuses (older GPUs, unsupported dtypes: it wants fp16/bf16).
    """
    if not w_masked.is_cuda:
        return None
    try:
        from torch.sparse import to_sparse_semi_structured

        return to_sparse_semi_structured(w_masked)
    except (ImportError, RuntimeError, ValueError, TypeError, NotImplementedError):
        return None
