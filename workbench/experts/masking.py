"""Expert masking by router hooks; the mask itself is the `expert_mask` edit (workbench.replay.edits).

Definitions: docs/methods.md#causal-specialization-by-expert-masking.

- `reroute` (default): the masked experts' router logits are set to −∞ before top-k, so each token
  picks its next-best expert; weights come from the router's own rule (softmax, top-k, re-normalised
  when the router re-normalises).
- `drop`: each token keeps its other choices; their weights are scaled to the sum the k weights had
  (1 for Mixtral-style routers), so the masked expert's share is given to the others (ours, for
  routers that do not re-normalise).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from workbench.errors import WorkbenchError
from workbench.models import ModelHandle
from workbench.models.bridge import unwrap
from workbench.models.hooks import hooks_attached
from workbench.probes.routing import moe_layers, router_module
from workbench.replay.edits import ExpertMask  # the one expert-mask class; importable from here too


def rerouted(logits: torch.Tensor, experts: tuple[int, ...], k: int, renormalise: bool):
    """The router's choice with `experts` removed: (masked logits, top-k weights, top-k indices)."""
    masked = logits.clone()
    masked[:, list(experts)] = float("-inf")
    probs = torch.softmax(masked.float(), dim=-1)
    weights, indices = torch.topk(probs, k, dim=-1)
    if renormalise:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return masked, weights, indices


def dropped(weights: torch.Tensor, indices: torch.Tensor, experts: tuple[int, ...]) -> torch.Tensor:
    """Top-k weights with the masked experts' entries zeroed and the rest scaled to the original sum."""
    hit = torch.isin(indices, torch.tensor(experts, device=indices.device))
    kept = weights.masked_fill(hit, 0.0)
    total, left = weights.sum(-1, keepdim=True), kept.sum(-1, keepdim=True)
    return torch.where(left > 0, kept * total / left.clamp_min(1e-30), kept)


def _renormalises(router) -> bool:
    return bool(getattr(unwrap(router), "norm_topk_prob", True))


def _hook(mask: ExpertMask, k: int, renormalise: bool):
    def hook(module, inputs, output):
        logits, weights, indices = output
        if mask.mode == "reroute":
            masked, new_weights, new_indices = rerouted(logits, mask.experts, k, renormalise)
            return masked, new_weights.to(weights.dtype), new_indices
        return logits, dropped(weights, indices, mask.experts).to(weights.dtype), indices

    return hook


def check_masks(handle: ModelHandle, masks: list[ExpertMask]) -> None:
    routed = moe_layers(handle)
    e, k = handle.facts.n_experts or 0, handle.facts.experts_per_token or 0
    for mask in masks:
        if mask.layer not in routed:
            raise WorkbenchError(
                f"Layer {mask.layer} of {handle.name} is not routed; routed layers: {routed}."
            )
        bad = [x for x in mask.experts if not 0 <= x < e]
        if bad:
            raise WorkbenchError(f"Expert(s) {bad} do not exist: layer {mask.layer} has experts 0..{e - 1}.")
        if mask.mode == "reroute" and e - len(set(mask.experts)) < k:
            raise WorkbenchError(
                f"Masking {len(mask.experts)} of {e} experts leaves fewer than top-{k} to route to."
            )


@contextlib.contextmanager
def experts_masked(handle: ModelHandle, masks: list[ExpertMask]) -> Iterator[None]:
    """Apply expert masks to every forward pass inside the block; the hooks are removed on exit."""
    check_masks(handle, masks)
    k = handle.facts.experts_per_token
    merged: dict[tuple[int, str], set[int]] = {}
    for mask in masks:
        merged.setdefault((mask.layer, mask.mode), set()).update(mask.experts)
    hooks = []
    for (layer, mode), experts in sorted(merged.items()):
        router = router_module(handle, layer)
        hooks.append(
            (router, _hook(ExpertMask(layer, tuple(sorted(experts)), mode), k, _renormalises(router)))
        )
    with hooks_attached(hooks):
        yield
