"""The rows of `kernels.triton_benchmark`: each Triton kernel against its torch CUDA path, on one GPU.

Imports only torch, the kernels and the timing helper (`timing`). Each row also carries the kernel's
largest error relative to the torch path's output, so a compiled kernel that computes the wrong thing
shows up beside its speed.
`gpu_rows("cpu", small=True)` runs the same cases on tiny shapes under TRITON_INTERPRET=1 (a dry run of
this code, not a measurement).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from workbench.bench.timing import median_seconds
from workbench.kernels.head_attention import head_masked_attention
from workbench.kernels.masked_matmul import (
    BlockMaskedWeight,
    block_masked_matmul,
    nm_compress,
    nm_matmul,
    semi_structured_2to4,
)
from workbench.kernels.moe_dispatch import moe_dispatch
from workbench.kernels.sparse_mlp import MlpParams, down_project_per_token, mlp_dense, sparse_mlp_per_token

Fn = Callable[[], object]


@dataclass(frozen=True)
class Setup:
    device: str
    small: bool  # tiny shapes, one timing: the dry run

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.device == "cuda" else torch.float32

    def randn(self, *shape: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.randn(*shape, device=self.device, dtype=dtype or self.dtype) / shape[-1] ** 0.5

    def ms(self, fn: Fn) -> float:
        """Median milliseconds of fn(): CUDA events, 50 calls after 10, on a GPU; one call in the dry run."""
        if self.device != "cuda":
            return median_seconds(fn, 1, warmup=0) * 1e3
        return median_seconds(fn, 50, warmup=10, cuda=True) * 1e3

    def row(self, kernel: str, shape: str, triton_fn: Fn, torch_fn: Fn, **baselines: Fn) -> dict:
        """Triton against the torch path (speedup = torch_ms / triton_ms), plus further baselines' times."""
        y, ref = triton_fn().float(), torch_fn().float()
        row = {"kernel": kernel, "shape": shape, "rel_err": ((y - ref).abs().max() / ref.abs().max()).item()}
        row["triton_ms"], row["torch_ms"] = self.ms(triton_fn), self.ms(torch_fn)
        row["speedup"] = row["torch_ms"] / row["triton_ms"]
        row.update({f"{name}_ms": self.ms(fn) for name, fn in baselines.items()})
        return row


def _mlp_rows(s: Setup) -> list[dict]:
    d, dm, skip = (64, 256, 0.9) if s.small else (2048, 8192, 0.9)
    p = MlpParams(w_in=s.randn(dm, d), b_in=s.randn(dm), w_out=s.randn(dm, d), b_out=s.randn(d), act="relu")
    k = round((1 - skip) * dm)
    return [r for tokens in ((1, 3) if s.small else (1, 16, 64)) for r in _mlp_case(s, p, k, tokens, skip)]


def _mlp_case(s: Setup, p: MlpParams, k: int, tokens: int, skip: float) -> list[dict]:
    x = s.randn(tokens, p.d_model)
    idx = torch.rand(tokens, p.d_mlp, device=s.device).topk(k, dim=1).indices
    a_sel = s.randn(tokens, k)
    shape = f"relu d={p.d_model} d_mlp={p.d_mlp} skip={skip} T={tokens}"
    return [
        s.row(
            "sparse_mlp_per_token", shape,
            lambda: sparse_mlp_per_token(x, p, idx, backend="triton"),
            lambda: sparse_mlp_per_token(x, p, idx, backend="torch"),
            dense=lambda: mlp_dense(x, p),
        ),
        s.row(
            "down_project_per_token", shape,
            lambda: down_project_per_token(a_sel, idx, p, backend="triton"),
            lambda: down_project_per_token(a_sel, idx, p, backend="torch"),
        ),
    ]  # fmt: skip


def _nm_case(s: Setup, x: torch.Tensor, w: torch.Tensor, n: int, m: int) -> dict:
    (N, K), T = w.shape, x.shape[0]
    top = torch.rand(N, K // m, m, device=s.device).topk(n, -1).indices
    mask = torch.zeros(N, K // m, m, dtype=torch.bool, device=s.device).scatter_(-1, top, True).view(N, K)
    nmw = nm_compress(w, mask, n, m)
    dense_w = nmw.dense()
    baselines = {"dense": lambda: F.linear(x, dense_w)}
    sparse = semi_structured_2to4(dense_w) if (n, m) == (2, 4) else None
    if sparse is not None:
        baselines["semi_structured_2to4"] = lambda: F.linear(x, sparse)
    return s.row(
        "nm_matmul", f"{n}:{m} T={T} N={N} K={K} {x.dtype}",
        lambda: nm_matmul(x, nmw, backend="triton"), lambda: nm_matmul(x, nmw, backend="torch"), **baselines,
    )  # fmt: skip


def _matmul_rows(s: Setup) -> list[dict]:
    T, N, K, tile = (20, 96, 128, 32) if s.small else (2048, 4096, 4096, 64)
    half = torch.float16 if s.device == "cuda" else torch.float32  # semi-structured wants fp16
    x, w = s.randn(T, K, dtype=half), s.randn(N, K, dtype=half)
    rows = [_nm_case(s, x, w, n, m) for n, m in ((2, 4), (1, 4))]
    tiles = torch.rand(N // tile, K // tile, device=s.device) < 0.1  # 90 % of the tiles empty
    tiles[0, 0] = True
    mask = tiles.repeat_interleave(tile, 0).repeat_interleave(tile, 1) & (
        torch.rand(N, K, device=s.device) < 0.5
    )
    bw = BlockMaskedWeight.from_mask(w, mask, block_n=tile, block_k=tile)
    rows.append(
        s.row(
            "block_masked_matmul", f"T={T} N={N} K={K} {x.dtype}, 90% of {tile}x{tile} tiles empty",
            lambda: block_masked_matmul(x, bw, backend="triton"),
            lambda: block_masked_matmul(x, bw, backend="torch"),
        )
    )  # fmt: skip
    return rows


def _attention_rows(s: Setup) -> list[dict]:
    B, H, KV, T, dh = (1, 4, 2, 40, 32) if s.small else (4, 32, 8, 2048, 64)
    kept = torch.arange(0, H, 2, device=s.device)  # every other head
    kv_of_head = kept // (H // KV)
    q = s.randn(B, len(kept), T, dh)
    k, v = s.randn(B, KV, T, dh), s.randn(B, KV, T, dh)
    q_all, all_heads = s.randn(B, H, T, dh), torch.arange(H, device=s.device) // (H // KV)
    return [
        s.row(
            "head_masked_attention", f"B={B} T={T} dh={dh}, {len(kept)} of {H} heads GQA {H}/{KV} {q.dtype}",
            lambda: head_masked_attention(q, k, v, kv_of_head, dh**-0.5, backend="triton"),
            lambda: head_masked_attention(q, k, v, kv_of_head, dh**-0.5, backend="torch"),
            all_heads_sdpa=lambda: head_masked_attention(q_all, k, v, all_heads, dh**-0.5, backend="torch"),
        )
    ]  # fmt: skip


def _moe_rows(s: Setup) -> list[dict]:
    T, d, dm, E, k = (40, 32, 48, 4, 2) if s.small else (2048, 1024, 2816, 8, 2)
    x, gate_up, down = s.randn(T, d), s.randn(E, 2 * dm, d), s.randn(E, d, dm)
    top_w, top_idx = torch.softmax(torch.randn(T, E, device=s.device), -1).topk(k, -1)
    top_w = torch.where(top_idx == 1, 0.0, top_w).to(s.dtype)  # expert 1 dropped
    return [
        s.row(
            "moe_dispatch", f"T={T} d={d} dm={dm} E={E} top-{k}, one expert dropped, {x.dtype}",
            lambda: moe_dispatch(x, top_idx, top_w, gate_up, down, "silu", backend="triton"),
            lambda: moe_dispatch(x, top_idx, top_w, gate_up, down, "silu", backend="torch"),
        )
    ]  # fmt: skip


def gpu_rows(device: str = "cuda", small: bool = False) -> list[dict]:
    """All rows; a case that fails records its error instead of hiding the others."""
    setup, rows = Setup(device, small), []
    for name, case in (
        ("mlp", _mlp_rows),
        ("matmul", _matmul_rows),
        ("attention", _attention_rows),
        ("moe", _moe_rows),
    ):
        torch.manual_seed(0)
        try:
            with torch.inference_mode():
                rows.extend(case(setup))
        except Exception as error:  # reported in its row; the other cases still run
            rows.append({"kernel": name, "error": f"{type(error).__name__}: {error}"})
    return rows
