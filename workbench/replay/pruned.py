"""Weight-pruning edits in replay: keep-masks from `workbench.essential.pruning.PruningPlan`, layers rebuilt
from masked copies of their weights, and every pruned projection run through the masked-matmul kernels.

Where the kernels dispatch to Triton (CUDA, or forced), a matrix pruned by one N:M edit (M a power of
two) is stored compressed (`NMWeight`: the kernel reads only the kept weights) and any other pruned
matrix as a `BlockMaskedWeight` (all-zero tiles are never read). Elsewhere both kernels' torch path is
a dense GEMM on the masked copy, so the layer simply keeps its masked weights (no second copy). The
choice is made once, when the edit is compiled. Routed experts (fused 3-D tensors) stay dense masked
copies everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from workbench.errors import WorkbenchError
from workbench.essential.pruning import PrunableMatrix, PruningPlan, parse_nm, prunable_matrices, scores
from workbench.kernels.activation import activation_fn
from workbench.kernels.dispatch import use_triton
from workbench.kernels.masked_matmul import (
    BlockMaskedWeight,
    NMWeight,
    block_masked_matmul,
    nm_compress,
    nm_matmul,
)
from workbench.kernels.sparse_mlp import MlpParams
from workbench.models import ModelHandle
from workbench.replay.caches import PruningOrderKey, ReplayCache
from workbench.replay.edits import WeightPrune
from workbench.replay.stack import Layer, Stack

# Pruning kinds (workbench.essential.pruning) -> the stack's projection names they cover.
STACK_NAMES = {
    "attn_q": ("q",),
    "attn_k": ("k",),
    "attn_v": ("v",),
    "attn_qkv": ("q", "k", "v"),
    "attn_o": ("o",),
    "mlp_in": ("in",),
    "mlp_gate": ("gate",),
    "mlp_out": ("out",),
}
ATTENTION = ("q", "k", "v", "o")


@dataclass(eq=False)
class MaskedLinear:
    """A pruned projection y = x Wᵀ + b [.., out] through the N:M or the block-masked kernel."""

    weight: NMWeight | BlockMaskedWeight
    backend: str | None = None

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(self.weight, NMWeight):
            return nm_matmul(x, self.weight, bias, backend=self.backend)
        return block_masked_matmul(x, self.weight, bias, backend=self.backend)


def masked_linear(w: torch.Tensor, nm: tuple[int, int] | None, backend: str | None) -> MaskedLinear | None:
    """w [out, in] already masked (zeros where pruned), N:M-compressed when `nm` allows it; None where
    the kernels' torch path would run (a dense GEMM on w itself)."""
    if not use_triton(w, backend=backend):
        return None
    keep = w != 0
    if nm is not None and nm[1] & (nm[1] - 1) == 0:
        compressed = nm_compress(w, keep, *nm)
        compressed._dense = w  # the masked copy is its decompressed form: the CPU path reuses it
        return MaskedLinear(compressed, backend)
    return MaskedLinear(BlockMaskedWeight.from_mask(w, keep), backend)


def prune_masks(
    handle: ModelHandle, edit: WeightPrune, cache: ReplayCache | None = None
) -> tuple[list[PrunableMatrix], list[torch.Tensor]]:
    """The matrices a weight-pruning edit touches and their keep-masks (from a `PruningPlan`).

    The plan (scores ranked once) is kept in `cache.pruning_orders` by everything but the level, so a
    sparsity slider pays the ranking once and each new level costs one comparison.
    """
    key = PruningOrderKey.of(edit)
    held = None if cache is None else cache.pruning_orders.get(key)
    if held is None:
        matrices = prunable_matrices(handle)
        layers = set(edit.layers(handle.facts.n_layers))
        chosen = [
            m for m in matrices if m.layer in layers and (edit.matrices is None or m.kind in edit.matrices)
        ]
        if not chosen:
            kinds = sorted({m.kind for m in matrices})
            raise WorkbenchError(f"weight_prune selects no matrices; kinds in this model: {kinds}")
        plan = PruningPlan.build(chosen, scores(chosen, edit.criterion, seed=edit.seed), edit.pattern)
        held = (chosen, plan) if cache is None else cache.pruning_orders.put(key, (chosen, plan))
    chosen, plan = held
    return chosen, plan.masks(edit.sparsity)


def pruned_layers(
    handle: ModelHandle, stack: Stack, edits: list[WeightPrune], cache: ReplayCache | None = None
) -> tuple[list[Layer], dict[int, Callable]]:
    """The stack's layers with pruned ones rebuilt, and the pruned dense MLPs as replay overrides."""
    if not edits:
        return stack.layers, {}
    overrides: dict[str, torch.Tensor] = {}
    patterns: dict[tuple[int, str], list[tuple[int, int] | None]] = {}  # (layer, stack name) -> N:M per edit
    touched: set[int] = set()
    for edit in [e for e in edits if e.sparsity > 0]:  # sparsity 0 is the dense baseline: no change
        nm = parse_nm(edit.pattern)
        for matrix, keep in zip(*prune_masks(handle, edit, cache), strict=True):
            name = matrix.name.split("[")[0]
            if name not in overrides and len(matrix.index) == 0:  # one pass: where(), not clone + fill
                overrides[name] = torch.where(keep, stack.params[name], 0.0)
            else:
                if name not in overrides:
                    overrides[name] = stack.params[name].clone()
                overrides[name][matrix.index].masked_fill_(~keep, 0.0)
            touched.add(matrix.layer)
            if len(matrix.index) == 0:  # a whole 2-D matrix (not one expert of a fused tensor)
                for short in STACK_NAMES[matrix.kind]:
                    patterns.setdefault((matrix.layer, short), []).append(nm)
    params = {**stack.params, **overrides}
    layers, mlps = list(stack.layers), {}
    for i in sorted(touched):
        layer = stack.layer_from(i, params)
        sparse = {
            short: (found[0] if len(found) == 1 else None)  # pruned twice: the union is not N:M
            for (li, short), found in patterns.items()
            if li == i
        }
        linears = {
            short: masked_linear(getattr(layer.attn, f"w_{short}"), nm, stack.backend)
            for short, nm in sparse.items()
            if short in ATTENTION
        }
        linears = {short: lin for short, lin in linears.items() if lin is not None}
        if linears:
            layer.attn = replace(layer.attn, linears=linears)
        mlp_sparse = {s: nm for s, nm in sparse.items() if s not in ATTENTION}
        if (
            isinstance(layer.mlp, MlpParams)
            and mlp_sparse
            and use_triton(layer.mlp.w_in, backend=stack.backend)
        ):
            mlps[i] = pruned_mlp(layer.mlp, mlp_sparse, stack.backend)
        layers[i] = layer
    return layers, mlps


def pruned_mlp(mlp: MlpParams, sparse: dict[str, tuple[int, int] | None], backend: str | None) -> Callable:
    """A dense MLP whose pruned projections (in, gate, out) run through the masked-matmul kernels."""
    act = activation_fn(mlp.act)
    dense = {"in": mlp.w_in, "gate": mlp.w_gate, "out": mlp.w_out.T.contiguous()}  # nn.Linear layout
    proj = {name: masked_linear(dense[name], nm, backend) for name, nm in sparse.items()}

    def linear(name: str, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if name in proj:
            return proj[name](x, bias)
        return torch.nn.functional.linear(x, dense[name], bias)

    def run(h: torch.Tensor) -> torch.Tensor:
        x = h.reshape(-1, h.shape[-1])
        up = linear("in", x, mlp.b_in)
        a = act(linear("gate", x, None)) * up if mlp.gated else act(up)
        return linear("out", a, mlp.b_out).view_as(h)

    return run
