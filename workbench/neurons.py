"""What an MLP neuron's activation is, defined once for every analysis that needs it.

See docs/methods.md#neuron-activations.

- Non-gated MLP: a = σ(W_in·h + b), hook `blocks.{l}.mlp.hook_post`; pre-activation `mlp.hook_pre`.
- Gated MLP (SwiGLU): a = SiLU(W_gate·h) ⊙ (W_up·h), the product that meets W_out, which TransformerLens
  names `mlp.hook_post` too; `mlp.hook_pre` is then the gate's pre-activation (W_gate·h), so a
  definition that looks at `pre` looks at the gate alone.
- MoE layers have no single neuron set here: the bridge's `mlp.hook_post` of a routed layer is the
  block's output, so neuron analyses refuse MoE models (experts are analysed by `workbench.experts`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.errors import WorkbenchError
from workbench.models import ModelHandle


@dataclass(frozen=True)
class NeuronHooks:
    layer: int
    post: str  # a: the activation that meets W_out
    pre: str  # the pre-activation (the gate's, for gated MLPs)
    gated: bool


def neuron_hooks(handle: ModelHandle, layers: list[int] | None = None) -> list[NeuronHooks]:
    """The hooks holding each layer's neuron activations and pre-activations."""
    if handle.facts.moe:
        raise WorkbenchError(
            f"{handle.name} is a mixture-of-experts model: its MLP hooks are the routed block's output, "
            "not neurons. Neuron sparsity needs a dense model (tiny-relu, smollm2-135m, ...)."
        )
    chosen = range(handle.facts.n_layers) if layers is None else layers
    return [
        NeuronHooks(
            layer, f"blocks.{layer}.mlp.hook_post", f"blocks.{layer}.mlp.hook_pre", handle.facts.gated_mlp
        )
        for layer in chosen
    ]


def output_weights(handle: ModelHandle, layer: int) -> torch.Tensor:
    """W_out of a layer as [d_mlp, d_model]: row i is what neuron i writes to the residual stream."""
    return handle.model.blocks[layer].mlp.W_out.detach()
