"""Edits applied by TransformerLens hooks on the bridge: the reference the replay engine is tested against,
and the way to run any other analysis (capture, evaluation) on an edited model.

Each edit becomes hooks (or, for weight pruning, weights zeroed in place and restored) that live only
inside `edits_applied(...)`; everything is removed on exit, also on error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from workbench.errors import WorkbenchError
from workbench.essential.pruning import pruned
from workbench.experts.masking import experts_masked
from workbench.models import ModelHandle
from workbench.models.hooks import hooks_attached
from workbench.replay.edits import (
    Edit,
    ExpertMask,
    HeadMask,
    NeuronMask,
    SublayerSkip,
    Threshold,
    TopK,
    TranscoderSplice,
    WeightPrune,
)


def _activation_hook(edit: Edit):
    """A hook on blocks.L.mlp.hook_post (the activations a that W_out reads)."""

    def hook(module, inputs, a):
        if isinstance(edit, NeuronMask):
            a = a.clone()
            a[..., list(edit.neurons)] = 0
            return a
        if isinstance(edit, Threshold):
            return a.masked_fill(a.abs() < edit.tau, 0)
        idx = a.abs().topk(min(edit.k, a.shape[-1]), dim=-1).indices
        return torch.zeros_like(a).scatter_(-1, idx, a.gather(-1, idx))

    return f"blocks.{edit.layer}.mlp.hook_post", hook


def _head_hook(edit: HeadMask, n_heads: int):
    def hook(module, inputs, z):  # z [B, T, H, dh], or [B, T, H*dh] as the bridge gives it
        heads = z.clone().view(*z.shape[:2], n_heads, -1)
        heads[:, :, list(edit.heads)] = 0
        return heads.view(z.shape)

    return f"blocks.{edit.layer}.attn.hook_z", hook


def _skip_hook(edit: SublayerSkip):
    name = "hook_attn_out" if edit.target == "attn" else "hook_mlp_out"
    return f"blocks.{edit.layer}.{name}", lambda module, inputs, out: torch.zeros_like(out)


def _check_indices(handle: ModelHandle, edit: Edit) -> None:
    facts = handle.facts
    for values, size, what in [
        (getattr(edit, "neurons", ()), facts.d_mlp, "neurons"),
        (getattr(edit, "heads", ()), facts.n_heads, "heads"),
    ]:
        bad = [v for v in values if not 0 <= v < size]
        if bad:
            raise WorkbenchError(f"{edit.kind}: layer {edit.layer} has {what} 0..{size - 1}, not {bad[:5]}")


@contextlib.contextmanager
def edits_applied(handle: ModelHandle, edits: list[Edit]) -> Iterator[None]:
    """Every forward of `handle.model` inside the block runs with the edits applied."""
    from workbench.replay.plan import checked_transcoder
    from workbench.replay.pruned import prune_masks
    from workbench.transcoders.run import load_any
    from workbench.transcoders.splice import mlp_replaced, transcoder_replacement

    n = handle.facts.n_layers
    for edit in edits:
        edit.check(n)
        _check_indices(handle, edit)
    hooks = []
    # Neuron masks act before top-k / threshold on the same MLP, whatever the list order (edits.py).
    for edit in sorted(edits, key=lambda e: not isinstance(e, NeuronMask)):
        if isinstance(edit, NeuronMask | TopK | Threshold):
            hooks.append(_activation_hook(edit))
        elif isinstance(edit, HeadMask):
            hooks.append(_head_hook(edit, handle.facts.n_heads))
        elif isinstance(edit, SublayerSkip):
            hooks.append(_skip_hook(edit))
    points = handle.hook_points
    missing = [name for name, _ in hooks if name not in points]
    if missing:
        raise WorkbenchError(f"{handle.name} has no hook point(s) {missing} for these edits")
    with contextlib.ExitStack() as stack:
        prunes = [e for e in edits if isinstance(e, WeightPrune)]
        masks = [prune_masks(handle, e) for e in prunes]  # all from the unedited weights, then applied
        for matrices, keep in masks:
            stack.enter_context(pruned(matrices, keep))
        expert_masks = [e for e in edits if isinstance(e, ExpertMask)]
        if expert_masks:
            stack.enter_context(experts_masked(handle, expert_masks))
        for edit in edits:
            if isinstance(edit, TranscoderSplice):
                transcoder = checked_transcoder(
                    load_any(edit.path), edit, handle.facts.d_model, handle.device
                )
                replacement = transcoder_replacement(transcoder, edit.features)
                stack.enter_context(mlp_replaced(handle, edit.layer, replacement))
        stack.enter_context(hooks_attached([(points[name], hook) for name, hook in hooks]))
        yield
