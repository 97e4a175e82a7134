"""Models: `load_model(name_or_path)` gives a ModelHandle with TransformerLens hook names."""

from __future__ import annotations

import torch

from workbench.models.checkpoint import check_checkpoint, tensor_sizes
from workbench.models.handle import ModelFacts, ModelHandle
from workbench.models.sources import MODELS, ModelSource, resolve_checkpoint

__all__ = ["MODELS", "ModelFacts", "ModelHandle", "ModelSource", "load_model", "resolve_device"]


def resolve_device(device: str | None) -> torch.device:
    """The requested device, or CUDA when there is one, else the CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(
    name_or_path: str,
    device: str | None = None,
    dtype: torch.dtype = torch.float32,
    process_weights: bool = False,
    progress: bool = True,
) -> ModelHandle:
    """Load a model by registry name, local checkpoint folder, hub id or TransformerLens name.

    Weights stay as released unless `process_weights=True` (TransformerLens folds LayerNorm and
    centres weights: outputs unchanged, magnitudes changed); the choice is recorded in the facts.
    """
    from transformer_lens.model_bridge import TransformerBridge

    name, folder, source = resolve_checkpoint(name_or_path, progress=progress)
    check_checkpoint(folder)
    bridge = TransformerBridge.boot_transformers(str(folder), device=str(resolve_device(device)), dtype=dtype)
    bridge.enable_compatibility_mode(disable_warnings=True, no_processing=not process_weights)
    bridge.eval()
    facts = _facts(name, source, bridge, process_weights, dtype, sum(tensor_sizes(folder).values()))
    return ModelHandle(bridge, bridge.tokenizer, facts, folder)


def _facts(name: str, source: str, bridge, processed: bool, dtype: torch.dtype, n_params: int) -> ModelFacts:
    cfg = bridge.cfg
    hf = bridge.original_model
    n_experts = cfg.num_experts or None
    return ModelFacts(
        name=name,
        source=source,
        architecture=cfg.architecture or type(hf).__name__,
        n_layers=cfg.n_layers,
        d_model=cfg.d_model,
        d_mlp=cfg.d_mlp,
        n_heads=cfg.n_heads,
        n_kv_heads=cfg.n_key_value_heads or cfg.n_heads,
        d_vocab=cfg.d_vocab,
        n_ctx=cfg.n_ctx,
        act_fn=str(cfg.act_fn),
        gated_mlp=bool(cfg.gated_mlp),
        moe=n_experts is not None,
        n_experts=n_experts,
        experts_per_token=cfg.experts_per_token if n_experts else None,
        n_params=n_params or sum(p.numel() for p in hf.parameters()),  # .bin-only folders
        weights_processed=processed,
        dtype=str(dtype).removeprefix("torch."),
    )
