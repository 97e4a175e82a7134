"""ModelHandle: one loaded model behind TransformerLens hook names, with its tokenizer and facts."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workbench.models import bridge


@dataclass(frozen=True)
class ModelFacts:
    """What analyses need to know about a model, and whether its weights are as released."""

    name: str
    source: str  # where the weights came from, in words (folder, wheel, hub id)
    architecture: str
    n_layers: int
    d_model: int
    d_mlp: int  # per expert for MoE models
    n_heads: int
    n_kv_heads: int
    d_vocab: int
    n_ctx: int
    act_fn: str
    gated_mlp: bool
    moe: bool
    n_experts: int | None
    experts_per_token: int | None
    n_params: int
    weights_processed: bool  # TransformerLens folding/centring applied (False: weights as released)
    dtype: str
    checkpoint: str  # the local folder the weights were read from
    source_record: dict | None = None  # the folder's SOURCE.json (e.g. wheel and GGUF sha256), if any

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def declared(
        cls,
        *,
        architecture: str,
        n_layers: int,
        d_model: int,
        d_mlp: int,
        n_heads: int,
        n_kv_heads: int,
        d_vocab: int,
        n_ctx: int,
        act_fn: str,
        gated_mlp: bool,
        n_experts: int | None = None,
        experts_per_token: int | None = None,
    ) -> dict[str, Any]:
        """The facts a registry entry states without loading the model: these fields of ModelFacts, by name
        and in field order (`moe` follows from `n_experts`). Tests check them against the loaded model."""
        given = dict(locals(), moe=n_experts is not None)
        return {f.name: given[f.name] for f in fields(cls) if f.name in given}


@dataclass
class ModelHandle:
    """A TransformerBridge in compatibility mode (TransformerLens hook names), its tokenizer and facts."""

    model: Any  # transformer_lens.model_bridge.TransformerBridge
    tokenizer: Any
    facts: ModelFacts
    folder: Path  # the local checkpoint it was loaded from

    @property
    def name(self) -> str:
        return self.facts.name

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @functools.cached_property
    def hook_points(self) -> dict[str, Any]:
        """Name -> HookPoint module, cached: the bridge rebuilds `hook_dict` on every access (~10 ms)."""
        return dict(self.model.hook_dict)

    @property
    def hf_model(self) -> nn.Module:
        """The Hugging Face model behind the bridge: the same weights, without TransformerLens hooks."""
        return bridge.hf_model(self.model)

    def hf_parameters(self) -> Iterator[tuple[str, nn.Module, str]]:
        """(HF parameter name, owning HF module, attribute) for every parameter, bridge aliases skipped."""
        return bridge.hf_parameters(self.hf_model)

    def hook_names(self) -> list[str]:
        """Every hook point the model exposes, by its TransformerLens name."""
        return sorted(self.hook_points)

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits [batch, pos, d_vocab] of a forward pass over token ids [batch, pos] (no BOS added)."""
        return self.model(tokens.to(self.device), return_type="logits")

    @property
    def separator_token_id(self) -> int:
        """The token placed between packed documents: the tokenizer's EOS (else BOS)."""
        tok = self.tokenizer
        token_id = tok.eos_token_id if tok.eos_token_id is not None else tok.bos_token_id
        if token_id is None:
            raise ValueError(f"tokenizer of {self.name} has neither an EOS nor a BOS token")
        return int(token_id)
