"""Routing probe: per MoE layer and token, the router logits, the chosen experts and their weights.

The values are read from the router module's own output (Hugging Face routers return
(logits, top-k weights, top-k indices)), so they are what the model used, not a re-derivation.
Shared-expert models (Qwen2-MoE style) also give the shared expert's sigmoid gate per token.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from workbench.errors import WorkbenchError
from workbench.models import ModelHandle
from workbench.probes.base import per_token
from workbench.store import FieldSpec


def moe_layers(handle: ModelHandle) -> list[int]:
    """Layers whose MLP is routed (has a router `gate` with a logits-weights-indices output)."""
    return [layer for layer in range(handle.facts.n_layers) if router_module(handle, layer) is not None]


def router_module(handle: ModelHandle, layer: int):
    mlp = getattr(handle.model.blocks[layer], "mlp", None)
    return getattr(mlp, "gate", None) if mlp is not None and hasattr(mlp, "experts") else None


def _shared_gate(handle: ModelHandle, layer: int):
    return getattr(handle.model.blocks[layer].mlp, "shared_expert_gate", None)


@dataclass
class RoutingProbe:
    layers: list[int] | None = None
    _layers: list[int] = field(default_factory=list, init=False)
    _shared: set[int] = field(default_factory=set, init=False)
    _seen: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict, init=False)

    def _resolve(self, handle: ModelHandle) -> None:
        routed = moe_layers(handle)
        if not handle.facts.moe or not routed:
            raise WorkbenchError(
                f"{handle.name} is a dense model: it has no router to capture. Use --routing with a "
                "mixture-of-experts model such as tiny-moe."
            )
        self._layers = routed if self.layers is None else [x for x in self.layers if x in routed]
        if not self._layers:
            raise WorkbenchError(f"None of layers {self.layers} is routed; routed layers: {routed}.")
        self._shared = {x for x in self._layers if _shared_gate(handle, x) is not None}

    def fields(self, handle: ModelHandle, context: int) -> list[FieldSpec]:
        self._resolve(handle)
        e, k = handle.facts.n_experts, handle.facts.experts_per_token
        specs = []
        for layer in self._layers:
            base = f"routing.blocks.{layer}"
            specs += [
                FieldSpec(f"{base}.router_logits", (e,), "float32"),
                FieldSpec(f"{base}.topk_indices", (k,), "int64"),
                FieldSpec(f"{base}.topk_weights", (k,), "float32"),
            ]
            if layer in self._shared:
                specs.append(FieldSpec(f"{base}.shared_expert_gate", (1,), "float32"))
        return specs

    def hooks(self, handle: ModelHandle):
        if not self._layers:
            self._resolve(handle)
        pairs = [(router_module(handle, layer), self._router_hook(layer)) for layer in self._layers]
        pairs += [(_shared_gate(handle, layer), self._shared_hook(layer)) for layer in sorted(self._shared)]
        return pairs

    def _router_hook(self, layer: int):
        def hook(module, inputs, output):
            if not (isinstance(output, tuple) and len(output) == 3):
                raise WorkbenchError(
                    f"The router of layer {layer} returned {type(output).__name__}, not (logits, weights, "
                    "indices); this MoE architecture is not supported by the routing probe yet."
                )
            logits, weights, indices = output
            self._seen[(layer, "router_logits")] = logits.detach().float()
            self._seen[(layer, "topk_weights")] = weights.detach().float()
            self._seen[(layer, "topk_indices")] = indices.detach().long()

        return hook

    def _shared_hook(self, layer: int):
        def hook(module, inputs, output):
            self._seen[(layer, "shared_expert_gate")] = torch.sigmoid(output.detach().float())

        return hook

    def take(self, batch: int, pos: int) -> dict[str, torch.Tensor]:
        out = {}
        for (layer, kind), value in sorted(self._seen.items()):
            out[f"routing.blocks.{layer}.{kind}"] = per_token(value, batch, pos).cpu()
        self._seen.clear()
        return out
