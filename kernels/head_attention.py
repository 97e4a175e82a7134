"""Causal attention of only the kept heads: masked query heads are never projected, scored or read.

The caller projects q for the kept heads only; `kv_of_head` maps each kept head to its key/value head
(grouped-query attention), so key/value heads are shared, not copied, on the Triton path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workbench.kernels.dispatch import triton_wins_head_attention, use_triton


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_of_head: torch.Tensor) -> None:
    if q.dim() != 4 or k.shape != v.shape or k.dim() != 4:
        raise ValueError(
            "want q [B, Hk, T, dh] and k, v [B, KV, T, dh]; "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree on batch, T or dh")
    if kv_of_head.shape != (q.shape[1],):
        raise ValueError(f"kv_of_head must be [Hk] = [{q.shape[1]}], one key/value head per kept query head")


def head_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_of_head: torch.Tensor, scale: float
) -> torch.Tensor:
    """Oracle: explicit scores, causal mask and float32 softmax; z [B, Hk, T, dh]."""
    kg, vg = k[:, kv_of_head].float(), v[:, kv_of_head].float()
    scores = q.float() @ kg.transpose(-1, -2) * scale  # [B, Hk, T, T]
    T = q.shape[2]
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    weights = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
    return (weights @ vg).to(q.dtype)


def head_masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_of_head: torch.Tensor,
    scale: float,
    backend: str | None = None,
) -> torch.Tensor:
    """z [B, Hk, T, dh]: causal attention of kept query heads q [B, Hk, T, dh] over k, v [B, KV, T, dh]."""
    _check(q, k, v, kv_of_head)
    if use_triton(q, k, v, kv_of_head, backend=backend, triton_wins=triton_wins_head_attention(q.shape[-1])):
        from workbench.kernels._triton_head_attention import triton_head_attention

        return triton_head_attention(q, k, v, kv_of_head, scale)
    kg, vg = k.index_select(1, kv_of_head), v.index_select(1, kv_of_head)
    return F.scaled_dot_product_attention(q, kg, vg, is_causal=True, scale=scale)
