"""The MLP's input and output of one layer, read from the Hugging Face modules directly (no bridge hooks).

Training needs only (x, y) at one layer, for many tokens: the TransformerBridge's forward (its hook
points and wrappers on every module) costs about a quarter more than the plain Hugging Face modules.
`DirectPairs` builds the base model truncated after layer L (layers 0..L only), sharing the bridge's
weight tensors (nothing is copied), and reads the MLP module's input and output with one forward hook
that then stops the pass. The result equals the bridge's `blocks.L.mlp.hook_in` / `hook_out`
(tests/unit/test_transcoder_data_direct.py).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from workbench.errors import WorkbenchError
from workbench.models import ModelHandle
from workbench.models.hooks import hooks_attached


class _Stop(Exception):
    """Raised by the MLP hook: nothing after the layer's MLP is needed."""


def _layers(base: nn.Module) -> nn.ModuleList:
    for name in ("h", "layers"):
        layers = getattr(base, name, None)
        if isinstance(layers, nn.ModuleList):
            return layers
    raise WorkbenchError(f"No list of layers (h or layers) in {type(base).__name__}.")


def _layer_count_key(config) -> str:
    for key in ("num_hidden_layers", "n_layer"):
        if hasattr(config, key):
            return key
    raise WorkbenchError(f"Cannot tell the number of layers of {type(config).__name__}.")


class DirectPairs:
    """(x, y) of layer `layer`'s MLP for token ids, through a truncated plain Hugging Face base model."""

    def __init__(self, handle: ModelHandle, layer: int) -> None:
        from transformers import AutoModel

        from workbench.models.bridge import hf_parameters

        original = handle.hf_model
        config = copy.deepcopy(original.config)
        setattr(config, _layer_count_key(config), layer + 1)
        prefix = original.base_model_prefix + "."
        # built with its own (random) weights, then every parameter is replaced by the bridge's tensor;
        # buffers (rotary frequencies, masks) are the ones Hugging Face computes from the config
        base = AutoModel.from_config(config, attn_implementation=original.config._attn_implementation)
        shared = {
            name.removeprefix(prefix): getattr(module, attr)
            for name, module, attr in hf_parameters(original)
            if name.startswith(prefix)
        }
        missing, _ = base.load_state_dict(shared, strict=False, assign=True)
        if missing:
            raise WorkbenchError(f"The plain model of {handle.name} lacks weights for {missing[:4]}.")
        self.device = handle.device
        self.base = base.to(self.device).eval().requires_grad_(False)
        self.mlp = _layers(base)[layer].mlp

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y [b·pos, d_model] (float32) of token ids [b, pos]."""
        seen: dict[str, torch.Tensor] = {}

        def hook(module, args, output):
            seen["x"], seen["y"] = args[0], output
            raise _Stop

        try:
            with hooks_attached([(self.mlp, hook)]):
                self.base(input_ids=tokens.to(self.device), use_cache=False)
        except _Stop:
            pass
        d = seen["x"].shape[-1]
        return seen["x"].reshape(-1, d).float(), seen["y"].reshape(-1, seen["y"].shape[-1]).float()
