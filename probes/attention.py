"""Attention probe: patterns per layer and head, one query row per token, or per-head summaries.

A window's pattern is [head, query, key]; it is kept as one row per query token, [head, key], so
that the store stays token-indexed. Where a model's fast attention never materialises the pattern
(`hook_pattern` does not fire), it is recomputed from the captured queries and keys:
softmax(q·kᵀ · scale + causal mask), with grouped key heads repeated. The query and key hooks give
[batch, pos, head, d_head], [batch, head, pos, d_head] (TransformerBridge's rotary hooks) or
[batch, pos, head · d_head] (fused projections); `per_head` brings each to the first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from workbench.errors import WorkbenchError
from workbench.models import ModelHandle
from workbench.probes.base import per_token, probing_pass
from workbench.store import FieldSpec
from workbench.store.format import FLOAT_DTYPES

SUMMARIES = ("entropy", "first_token", "max")  # per query token and head


def pattern_from_qk(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention pattern [batch, head, query, key] from q [b, pos, h, d] and k [b, pos, h_kv, d]."""
    if k.shape[2] != q.shape[2]:
        k = k.repeat_interleave(q.shape[2] // k.shape[2], dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scale
    pos = q.shape[1]
    future = torch.ones(pos, pos, dtype=torch.bool, device=q.device).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(-1)


def per_head(t: torch.Tensor, pos: int, n_heads: int, heads_first: bool) -> torch.Tensor:
    """Queries or keys as [batch, pos, head, d_head]. `heads_first` says how a 4-d tensor whose head and
    position sizes are equal is laid out (the bridge's rotary hooks put heads first)."""
    if t.dim() == 3 and t.shape[1] == pos:
        return t.unflatten(-1, (n_heads, -1))
    if t.dim() == 4:
        by_head, by_pos = tuple(t.shape[1:3]) == (n_heads, pos), tuple(t.shape[1:3]) == (pos, n_heads)
        if by_head and (heads_first or not by_pos):
            return t.transpose(1, 2)
        if by_pos:
            return t
    raise WorkbenchError(
        f"Cannot read {n_heads} heads over {pos} positions from a query/key of shape {tuple(t.shape)}; "
        "the attention pattern of this model cannot be recomputed."
    )


def summarise(pattern: torch.Tensor) -> torch.Tensor:
    """[batch, head, query, key] → [batch, query, head, 3]: entropy (nats), weight on key 0, max weight."""
    entropy = -(pattern * pattern.clamp_min(1e-30).log()).sum(-1)
    stats = torch.stack([entropy, pattern[..., 0], pattern.max(-1).values], dim=-1)  # [b, h, q, 3]
    return stats.transpose(1, 2)


@dataclass
class AttentionProbe:
    layers: list[int] | None = None
    heads: list[int] | None = None
    summaries_only: bool = False
    dtype: str = "float32"
    _layers: list[int] = field(default_factory=list, init=False)
    _recompute: set[int] = field(default_factory=set, init=False)
    _qk_names: dict[tuple[int, str], str] = field(default_factory=dict, init=False)
    _n_heads: dict[str, int] = field(default_factory=dict, init=False)  # query and key heads
    _seen: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict, init=False)

    @property
    def recomputed(self) -> list[int]:
        """Layers whose pattern is recomputed from queries and keys (hook_pattern never fired); known once
        `fields` has run."""
        return sorted(self._recompute)

    def field_name(self, layer: int) -> str:
        return f"attention.blocks.{layer}.{'summary' if self.summaries_only else 'pattern'}"

    def _check(self, handle: ModelHandle) -> None:
        n_layers, n_heads = handle.facts.n_layers, handle.facts.n_heads
        self._n_heads = {"q": n_heads, "k": handle.facts.n_kv_heads or n_heads}
        self._layers = list(range(n_layers)) if self.layers is None else list(self.layers)
        bad = [x for x in self._layers if not 0 <= x < n_layers]
        bad_heads = [h for h in self.heads or [] if not 0 <= h < n_heads]
        if bad or bad_heads:
            raise WorkbenchError(
                f"{handle.name} has layers 0..{n_layers - 1} and heads 0..{n_heads - 1}; "
                f"got layers {bad or 'ok'}, heads {bad_heads or 'ok'}."
            )

    def fields(self, handle: ModelHandle, context: int) -> list[FieldSpec]:
        self._check(handle)
        fired: set[str] = set()
        modules = [handle.hook_points[f"blocks.{layer}.attn.hook_pattern"] for layer in self._layers]
        probing_pass(handle, [(m, lambda mod, i, o, m=m: fired.add(m.name)) for m in modules])
        self._recompute = {
            layer for layer in self._layers if f"blocks.{layer}.attn.hook_pattern" not in fired
        }
        n_heads = len(self.heads) if self.heads else handle.facts.n_heads
        shape = (n_heads, 3) if self.summaries_only else (n_heads, context)
        return [FieldSpec(self.field_name(layer), shape, self.dtype) for layer in self._layers]

    def hooks(self, handle: ModelHandle):
        if not self._layers:
            self._check(handle)
        pairs = []
        for layer in self._layers:
            kinds = ("q", "k") if layer in self._recompute else ("pattern",)
            for kind in kinds:
                name = (
                    _qk_hook(handle, layer, kind)
                    if kind != "pattern"
                    else f"blocks.{layer}.attn.hook_pattern"
                )
                self._qk_names[(layer, kind)] = name
                pairs.append((handle.hook_points[name], self._store_hook(layer, kind)))
        return pairs

    def _store_hook(self, layer: int, kind: str):
        def hook(module, inputs, output):
            self._seen[(layer, kind)] = output.detach()

        return hook

    def take(self, batch: int, pos: int) -> dict[str, torch.Tensor]:
        out = {}
        for layer in self._layers:
            if layer in self._recompute:
                q, k = (
                    per_head(
                        self._seen.pop((layer, kind)),
                        pos,
                        self._n_heads[kind],
                        heads_first=".hook_rot_" in self._qk_names[(layer, kind)],
                    )
                    for kind in ("q", "k")
                )
                pattern = pattern_from_qk(q, k, 1 / math.sqrt(q.shape[-1]))
            else:
                pattern = self._seen.pop((layer, "pattern")).float()  # [b, h, q, k]
            if self.heads:
                pattern = pattern[:, self.heads]
            rows = summarise(pattern) if self.summaries_only else pattern.transpose(1, 2)  # [b, q, h, ...]
            out[self.field_name(layer)] = per_token(rows, batch, pos).to(FLOAT_DTYPES[self.dtype]).cpu()
        return out


def _qk_hook(handle: ModelHandle, layer: int, kind: str) -> str:
    """The post-rotary query/key hook where the model has one, else the plain one."""
    rotary = f"blocks.{layer}.attn.hook_rot_{kind}"
    return rotary if rotary in handle.hook_points else f"blocks.{layer}.attn.hook_{kind}"
