"""One-shot weight pruning core (docs/methods.md#essential-sparsity): scope, scores, orderings, masks.

Scope (the reference one): the attention Q, K, V (or fused QKV), O and MLP in / gate / out matrices of every
block, shared experts and each routed expert included. Never pruned: embeddings, the unembedding (lm_head),
norms, biases, and routers (`mlp.gate`, `shared_expert_gate`): a router decides which experts run, so
pruning it is a different edit from pruning weights. Fused storage counts as one matrix: GPT-2's `c_attn`
is one "attn_qkv" matrix, an expert's fused `gate_up_proj` slice is one "mlp_in" matrix.

Pruning acts in place on the Hugging Face parameters as released (not folded or centred), so the handle's
forward sees it; `pruned` restores the original values bitwise on exit.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from workbench.errors import WorkbenchError
from workbench.essential.defaults import CRITERIA

# Leaf module name (or, for fused 3-D expert tensors, parameter name) -> kind.
_KINDS = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_o",
    "c_attn": "attn_qkv",
    "qkv_proj": "attn_qkv",
    "gate_proj": "mlp_gate",
    "up_proj": "mlp_in",
    "down_proj": "mlp_out",
    "gate_up_proj": "mlp_in",
    "c_fc": "mlp_in",
    "w1": "mlp_gate",
    "w3": "mlp_in",
    "w2": "mlp_out",
}
_ROUTERS = ("gate", "shared_expert_gate", "router")
_BLOCK = re.compile(r"(?:^|\.)(?:h|layers|blocks)\.(\d+)\.")


@dataclass(frozen=True, eq=False)
class PrunableMatrix:
    """One matrix in scope: a live parameter, or one expert's slice of a fused 3-D parameter."""

    name: str  # HF parameter name, plus "[e]" for expert e of a fused expert tensor
    param: torch.nn.Parameter  # the live parameter
    index: tuple  # index into param selecting this matrix: () or (e,)
    in_dim: int  # axis of the selected matrix that is the input dimension (0 Conv1D, 1 Linear)
    kind: str  # attn_q | attn_k | attn_v | attn_qkv | attn_o | mlp_in | mlp_gate | mlp_out
    layer: int

    @property
    def weight(self) -> torch.Tensor:
        """The live matrix (a view sharing the parameter's storage, outside autograd)."""
        return self.param.detach()[self.index]

    @property
    def shape(self) -> torch.Size:
        return self.weight.shape

    def numel(self) -> int:
        return self.weight.numel()


def prunable_matrices(handle) -> list[PrunableMatrix]:
    """The reference scope of `handle`'s HF model, in module order (see the module docstring)."""
    hidden = getattr(handle.hf_model.config, "hidden_size", None)
    out: list[PrunableMatrix] = []
    unknown: list[str] = []
    seen: set[int] = set()
    for name, module, attr in handle.hf_parameters():
        param = module._parameters[attr]
        block = _BLOCK.search(name)
        if block is None or param.ndim < 2 or id(param) in seen:
            continue  # outside blocks (embeddings, lm_head, final norm), or a bias / norm vector
        seen.add(id(param))
        parts = name.split(".")
        layer = int(block.group(1))
        if param.ndim == 3 and parts[-2] == "experts" and parts[-1] in _KINDS:
            # Fused experts [E, out, in] (transformers 5); [E, in, out] is recognised by the hidden size.
            kind = _KINDS[parts[-1]]
            in_axis = 1
            if hidden is not None and param.shape[1] != param.shape[2]:
                in_axis = 1 if param.shape[2 if kind != "mlp_out" else 1] == hidden else 0
            for e in range(param.shape[0]):
                out.append(PrunableMatrix(f"{name}[{e}]", param, (e,), in_axis, kind, layer))
            continue
        leaf = parts[-2] if len(parts) > 1 else ""
        kind = _KINDS.get(leaf)
        if leaf == "c_proj":  # GPT-2 uses c_proj for both the attention output and the MLP output
            kind = "attn_o" if parts[-3] == "attn" else "mlp_out"
        if param.ndim == 2 and attr == "weight" and kind is not None:
            in_axis = 0 if type(module).__name__ == "Conv1D" else 1
            out.append(PrunableMatrix(name, param, (), in_axis, kind, layer))
        elif leaf not in _ROUTERS:
            unknown.append(name)
    if unknown:
        raise WorkbenchError(
            f"pruning does not know what these block parameters are: {unknown[:5]}; "
            "add their module names to _KINDS (or to _ROUTERS to leave them dense) in "
            "workbench/essential/pruning.py"
        )
    if not out:
        raise WorkbenchError(f"found no prunable attention/MLP matrices in {type(handle.hf_model).__name__}")
    return out


def scores(
    matrices: Sequence[PrunableMatrix],
    criterion: str,
    seed: int = 0,
    input_norms: dict[str, torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Float32 importance per weight, same shape as each matrix; lower scores are pruned first.

    magnitude: |W|. random: uniform [0, 1) from one generator seeded with `seed`, drawn in matrix order.
    wanda: |W_ij| * ||X_j||_2, `input_norms[name]` being the L2 norm of input feature j over calibration
    tokens (length = the matrix's input size).
    """
    if criterion not in CRITERIA:
        raise WorkbenchError(f"unknown pruning criterion {criterion!r}; use one of {', '.join(CRITERIA)}")
    if criterion == "wanda" and input_norms is None:
        raise WorkbenchError("criterion 'wanda' needs input_norms (per-input-feature L2 norms per matrix)")
    gen = torch.Generator().manual_seed(seed)
    result = []
    for m in matrices:
        w = m.weight
        if criterion == "random":
            result.append(torch.rand(w.shape, generator=gen, dtype=torch.float32).to(w.device))
            continue
        s = w.abs().float()
        if criterion == "wanda":
            norm = input_norms.get(m.name)
            if norm is None or norm.shape != (w.shape[m.in_dim],):
                got = "missing" if norm is None else f"shape {tuple(norm.shape)}"
                raise WorkbenchError(
                    f"wanda input_norms[{m.name!r}] is {got}; give a vector of length {w.shape[m.in_dim]}"
                )
            norm = norm.to(device=s.device, dtype=torch.float32)
            s = s * (norm[None, :] if m.in_dim == 1 else norm[:, None])
        result.append(s)
    return result


def _check_level(sparsity: float) -> None:
    if not 0.0 <= sparsity <= 1.0:
        raise WorkbenchError(f"sparsity must lie in [0, 1], got {sparsity}")


def parse_nm(pattern: str) -> tuple[int, int] | None:
    match = re.fullmatch(r"(\d+):(\d+)", pattern)
    if match is None:
        return None
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise WorkbenchError(f"N:M pattern {pattern!r} needs 0 < N < M, e.g. '2:4'")
    return n, m


def _stable_order(flat: torch.Tensor) -> torch.Tensor:
    """Ascending stable argsort (equal scores: lower flat index first); int32 when it fits."""
    order = torch.sort(flat, stable=True).indices
    return order.to(torch.int32) if flat.numel() < 2**31 else order


def _ranks(flat: torch.Tensor) -> torch.Tensor:
    """Each weight's place in the stable ascending order, so a level's mask is one comparison."""
    order = _stable_order(flat)
    rank = torch.empty_like(order)
    rank[order.long() if order.dtype != torch.int64 else order] = torch.arange(
        order.numel(), dtype=order.dtype, device=order.device
    )
    return rank


class PruningPlan:
    """One ordering per pattern, computed once; the mask of a level is the first k entries of the order.

    Ties in score are broken by flat index: lower index pruned first (global: flat index over the matrices
    concatenated in list order, each row-major). Counts are exact: global prunes round(s * N) over all
    weights in scope, layerwise round(s * n) in each matrix, rowwise round(s * n_in) in each output row
    (Wanda's comparison group), all with Python round (half to even).
    N:M keeps, in each output row, the N highest scores of each group of M consecutive input weights; its
    sparsity is fixed at 1 - N/M, so `masks(s)` accepts only that s (or 0 for the dense baseline). Input
    sizes not divisible by M are refused (no silent dense tail).

    Memory: global sorts all N scores at once: about 16 N bytes at peak inside `build` (the concatenated
    float32 scores, the sorted values and the int64 indices), on top of the caller's scores; the plan then
    keeps each weight's rank as int32 (4 N bytes). Measured for 100M weights (CPU): build ~20 s, peak
    +2.4 GB RSS including the scores; masks(s) is one comparison. Layerwise
    peaks at one matrix at a time; N:M keeps its bool mask (N bytes).
    """

    def __init__(self, pattern: str, shapes: list[torch.Size], orders: list[torch.Tensor], nm=None):
        self.pattern = pattern
        self.shapes = shapes
        self.sizes = [s.numel() for s in shapes]
        self._orders = orders  # global: [ranks]; layerwise and rowwise: ranks per matrix; N:M: keep-masks
        self._nm = nm

    @classmethod
    def build(
        cls, matrices: Sequence[PrunableMatrix], scores: Sequence[torch.Tensor], pattern: str
    ) -> PruningPlan:
        shapes = [m.shape for m in matrices]
        if len(scores) != len(matrices) or any(s.shape != sh for s, sh in zip(scores, shapes, strict=True)):
            raise WorkbenchError("scores must be one tensor per matrix, each of the matrix's shape")
        if pattern == "global":
            flat = torch.cat([s.reshape(-1).float() for s in scores])
            rank = _ranks(flat)
            del flat
            return cls(pattern, shapes, [rank])
        if pattern == "layerwise":
            return cls(pattern, shapes, [_ranks(s.reshape(-1).float()) for s in scores])
        if pattern == "rowwise":  # Wanda's comparison group: each output row on its own
            ranks = []
            for mat, s in zip(matrices, scores, strict=True):
                rows_last = s.float() if mat.in_dim == 1 else s.float().T  # [out, in]
                order = torch.sort(rows_last, dim=-1, stable=True).indices
                rank = torch.empty_like(order, dtype=torch.int32)
                positions = (
                    torch.arange(order.shape[1], dtype=torch.int32, device=order.device)
                    .expand_as(order)
                    .contiguous()
                )
                rank.scatter_(-1, order, positions)
                ranks.append(rank if mat.in_dim == 1 else rank.T.contiguous())
            plan = cls(pattern, shapes, ranks)
            plan._in_dims = [m.in_dim for m in matrices]
            return plan
        nm = parse_nm(pattern)
        if nm is None:
            raise WorkbenchError(
                f"unknown pruning pattern {pattern!r}; use 'global', 'layerwise', 'rowwise' or 'N:M'"
            )
        n, m = nm
        keeps = []
        for mat, s in zip(matrices, scores, strict=True):
            rows_last = s.float() if mat.in_dim == 1 else s.float().T  # [out, in]
            if rows_last.shape[1] % m:
                raise WorkbenchError(
                    f"{mat.name}: input size {rows_last.shape[1]} is not divisible by M={m}; choose an M "
                    "that divides every input size or use 'global'/'layerwise'"
                )
            groups = rows_last.reshape(rows_last.shape[0], -1, m)
            rank = torch.empty_like(groups, dtype=torch.int64)
            order = torch.sort(groups, dim=-1, stable=True).indices
            rank.scatter_(-1, order, torch.arange(m, device=order.device).expand_as(order).contiguous())
            keep = (rank >= m - n).reshape(rows_last.shape)
            keeps.append(keep if mat.in_dim == 1 else keep.T.contiguous())
        return cls(pattern, shapes, keeps, nm)

    @property
    def fixed_sparsity(self) -> float | None:
        """1 - N/M for an N:M plan, else None (any level in [0, 1])."""
        return None if self._nm is None else 1.0 - self._nm[0] / self._nm[1]

    def n_pruned(self, sparsity: float) -> int:
        """How many weights `masks(sparsity)` prunes."""
        self._check(sparsity)
        if self.pattern == "global":
            return round(sparsity * sum(self.sizes))
        if self.pattern == "layerwise":
            return sum(round(sparsity * n) for n in self.sizes)
        if self.pattern == "rowwise":
            return sum(
                round(sparsity * sh[d]) * (n // sh[d])
                for sh, d, n in zip(self.shapes, self._in_dims, self.sizes, strict=True)
            )
        return 0 if sparsity == 0 else sum(self.sizes) * (self._nm[1] - self._nm[0]) // self._nm[1]

    def masks(self, sparsity: float) -> list[torch.Tensor]:
        """Bool keep-masks (True = keep), one per matrix, of the matrix's shape."""
        self._check(sparsity)
        if self.pattern == "global":
            (rank,) = self._orders
            keep = rank >= round(sparsity * rank.numel())
            return [k.view(sh) for k, sh in zip(keep.split(self.sizes), self.shapes, strict=True)]
        if self.pattern == "layerwise":
            return [
                (rank >= round(sparsity * rank.numel())).view(sh)
                for rank, sh in zip(self._orders, self.shapes, strict=True)
            ]
        if self.pattern == "rowwise":
            return [
                rank >= round(sparsity * sh[d])
                for rank, sh, d in zip(self._orders, self.shapes, self._in_dims, strict=True)
            ]
        if sparsity == 0:
            return [torch.ones_like(k) for k in self._orders]
        return [k.clone() for k in self._orders]

    def _check(self, sparsity: float) -> None:
        _check_level(sparsity)
        fixed = self.fixed_sparsity
        if fixed is not None and sparsity != 0 and abs(sparsity - fixed) > 1e-9:
            raise WorkbenchError(
                f"an {self.pattern} plan prunes exactly {fixed:g} of the weights; ask for that level (or 0)"
            )


@contextmanager
def pruned(matrices: Sequence[PrunableMatrix], masks: Sequence[torch.Tensor]) -> Iterator[None]:
    """Zero the weights whose mask is False, in place; on exit (also on error) restore them bitwise.

    Keeps a copy of each matrix (a plain memcpy to restore: boolean gathers of half the weights cost
    more than the copy on a 100M-weight model), and zeroes with one masked fill.
    """
    if len(masks) != len(matrices):
        raise WorkbenchError(f"got {len(masks)} masks for {len(matrices)} matrices; give one per matrix")
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for m, keep in zip(matrices, masks, strict=True):
                w = m.weight
                if keep.dtype != torch.bool or keep.shape != w.shape:
                    raise WorkbenchError(f"mask for {m.name} must be bool of shape {tuple(w.shape)}")
                saved.append((w, w.clone()))
                w.masked_fill_(~keep.to(w.device), 0)
        yield
    finally:
        with torch.no_grad():
            for w, original in reversed(saved):
                w.copy_(original)
