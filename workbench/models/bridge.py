"""Seeing through TransformerBridge to the Hugging Face model it wraps.

The bridge keeps the Hugging Face model as `original_model` and wraps each of its modules in a
component whose `_original_component` is the Hugging Face module. Only this package reads those
attributes; analyses ask the ModelHandle (`hf_model`, `hf_parameters()`) or `unwrap` here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import nn

_WRAPPED = "_original_component"


def hf_model(bridge: Any) -> nn.Module:
    """The Hugging Face model behind a TransformerBridge (its weights are the bridge's weights)."""
    return bridge.original_model


def unwrap(module: nn.Module) -> nn.Module:
    """The Hugging Face module behind a bridge component (the module itself when it is not wrapped)."""
    while _WRAPPED in module._modules:
        module = module._modules[_WRAPPED]
    return module


def hf_parameters(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module, str]]:
    """(HF parameter name, owning HF module, attribute) over the HF tree, seeing through bridge wrappers.

    Walks only each bridge's `_original_component`, so the bridge's aliases (e.g. GPT-2's q/k/v views of
    `c_attn`) are not listed twice and names are the HF ones.
    """
    module = unwrap(module)
    for attr, param in module._parameters.items():
        if param is not None:
            yield prefix + attr, module, attr
    for child_name, child in module._modules.items():
        if child is not None:
            yield from hf_parameters(child, f"{prefix}{child_name}.")
