"""Models: `load_model(name_or_path)` gives a ModelHandle with TransformerLens hook names."""

from __future__ import annotations

import json

import torch

from workbench.errors import WorkbenchError
from workbench.models.checkpoint import check_checkpoint, tensor_sizes
from workbench.models.handle import ModelFacts, ModelHandle
from workbench.models.sources import MODELS, ModelSource, resolve_checkpoint

__all__ = ["MODELS", "ModelFacts", "ModelHandle", "ModelSource", "load_model", "resolve_device"]


def resolve_device(device: str | None) -> torch.device:
    """The requested device, or CUDA when there is one, else the CPU."""
    if not device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise WorkbenchError(f"Unknown device {device!r} ({err}); use cpu, cuda or cuda:N.") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise WorkbenchError(f"--device {device}: this machine has no CUDA GPU; use --device cpu.")
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise WorkbenchError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here.")
    return resolved


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
    check_checkpoint(folder, MODELS.get(name_or_path).repair if name_or_path in MODELS else "")
    bridge = TransformerBridge.boot_transformers(str(folder), device=str(resolve_device(device)), dtype=dtype)
    bridge.enable_compatibility_mode(disable_warnings=True, no_processing=not process_weights)
    bridge.eval()
    facts = _facts(name, source, bridge, process_weights, dtype, folder)
    return ModelHandle(bridge, bridge.tokenizer, facts, folder)


def _facts(name: str, source: str, bridge, processed: bool, dtype: torch.dtype, folder) -> ModelFacts:
    cfg = bridge.cfg
    hf = bridge.original_model
    n_params = sum(tensor_sizes(folder).values())
    record = folder / "SOURCE.json"
    n_experts = cfg.num_experts or None
    return ModelFacts(
        name=name,
        source=source,
        architecture=cfg.architecture or type(hf).__name__,
        n_layers=cfg.n_layers,
        d_model=cfg.d_model,
        d_mlp=getattr(hf.config, "moe_intermediate_size", None) or cfg.d_mlp,  # per expert in MoEs
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
        checkpoint=str(folder),
        source_record=json.loads(record.read_text()) if record.is_file() else None,
    )
