"""Turning a list of edits into a replay plan: per layer, what replaces the attention and MLP sublayers.

Work an edit removes is skipped through the kernels (`workbench.kernels`): a static neuron set gathers
its weights once (timed as `apply_seconds`), masked heads are never projected, masked experts never run.
What stays dense: per-token sets chosen from the activations (top-k, threshold) need every activation
first, so W_in (and W_gate) run densely and only W_out is sparse (top-k) or masked (threshold).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from workbench.errors import WorkbenchError
from workbench.experts.masking import dropped, rerouted
from workbench.kernels.head_attention import head_masked_attention
from workbench.kernels.sparse_mlp import (
    MlpParams,
    activations,
    down_project_per_token,
    gather_neurons,
    mlp_dense,
)
from workbench.models import ModelHandle
from workbench.replay.caches import ReplayCache, TranscoderKey
from workbench.replay.edits import (
    Edit,
    ExpertMask,
    NeuronMask,
    SublayerSkip,
    Threshold,
    TopK,
    TranscoderSplice,
    WeightPrune,
    first_layer,
)
from workbench.replay.pruned import pruned_layers
from workbench.replay.stack import Attention, Layer, Moe, Stack

Sublayer = Callable[..., torch.Tensor] | None  # None: the sublayer is removed


@dataclass
class Plan:
    """What replay runs: layers (rebuilt where weights changed), sublayer overrides, and its set-up cost."""

    first_layer: int
    layers: list[Layer]
    attn: dict[int, Sublayer] = field(default_factory=dict)
    mlp: dict[int, Sublayer] = field(default_factory=dict)
    apply_seconds: float = 0.0


def compile_plan(
    handle: ModelHandle, stack: Stack, edits: list[Edit], cache: ReplayCache | None = None
) -> Plan:
    """Check the edits against the model and build the plan. `cache` keeps loaded transcoders and
    pruning orders between calls (the engine's)."""
    start = time.perf_counter()
    n = stack.n_layers
    for edit in edits:
        edit.check(n)
    layers, pruned_mlps = pruned_layers(
        handle, stack, [e for e in edits if isinstance(e, WeightPrune)], cache
    )
    plan = Plan(first_layer(edits, n), layers, mlp=pruned_mlps)  # other MLP edits below replace these
    by_layer: dict[tuple[int, str], list[Edit]] = {}
    for edit in edits:
        if not isinstance(edit, WeightPrune):
            by_layer.setdefault((edit.layer, edit.sublayer), []).append(edit)
    for (layer, sublayer), group in sorted(by_layer.items()):
        target = plan.attn if sublayer == "attn" else plan.mlp
        make = _attention if sublayer == "attn" else _mlp
        target[layer] = make(handle, layers[layer], group, layer, cache, stack.backend)
    plan.apply_seconds = time.perf_counter() - start
    return plan


def _skip_or(group: list[Edit], where: str) -> bool:
    skips = [e for e in group if isinstance(e, SublayerSkip)]
    if skips and len(group) > len(skips):
        others = sorted({e.kind for e in group if not isinstance(e, SublayerSkip)})
        raise WorkbenchError(f"{where} is skipped and also edited by {others}; drop one of them")
    return bool(skips)


def _attention(handle, layer: Layer, group: list[Edit], index: int, cache, backend) -> Sublayer:
    if _skip_or(group, f"layer {index}'s attention"):
        return None
    heads = sorted({h for e in group for h in e.heads})
    bad = [h for h in heads if not 0 <= h < layer.attn.n_heads]
    if bad:
        raise WorkbenchError(f"head_mask: layer {index} has heads 0..{layer.attn.n_heads - 1}, not {bad}")
    return head_masked(layer.attn, [h for h in range(layer.attn.n_heads) if h not in heads], backend)


def head_masked(
    attn: Attention, kept: list[int], backend: str | None = None
) -> Callable[[torch.Tensor, object], torch.Tensor]:
    """Attention computing only the kept heads: their q rows, the kv heads they read, their w_o columns."""
    dh, group = attn.d_head, attn.n_heads // attn.n_kv
    kv_heads = sorted({h // group for h in kept})
    rows = lambda hs: torch.tensor([h * dh + j for h in hs for j in range(dh)], dtype=torch.long)
    q_rows, kv_rows = rows(kept), rows(kv_heads)
    kv_of_head = torch.tensor([kv_heads.index(h // group) for h in kept], dtype=torch.long)

    def pick(w, b, idx):
        return w[idx].contiguous(), None if b is None else b[idx].contiguous()

    w_q, b_q = pick(attn.w_q, attn.b_q, q_rows)
    w_k, b_k = pick(attn.w_k, attn.b_k, kv_rows)
    w_v, b_v = pick(attn.w_v, attn.b_v, kv_rows)
    w_o = attn.w_o[:, q_rows].contiguous()
    # linears=None: pruned full-size projections do not apply to the gathered heads (their rows are masked)
    small = replace(attn, w_q=w_q, b_q=b_q, w_k=w_k, b_k=b_k, w_v=w_v, b_v=b_v, w_o=w_o, linears=None)

    def run(x: torch.Tensor, rope) -> torch.Tensor:
        if not kept:  # every head masked: only the output bias is left
            out = torch.zeros(*x.shape[:-1], attn.w_o.shape[0], dtype=x.dtype, device=x.device)
            return out if attn.b_o is None else out + attn.b_o
        q, k, v = small.project(x, rope)
        z = head_masked_attention(q, k, v, kv_of_head.to(x.device), attn.scale, backend=backend)
        return small.output(z)

    return run


def _mlp(handle, layer: Layer, group: list[Edit], index: int, cache, backend) -> Sublayer:
    if _skip_or(group, f"layer {index}'s MLP"):
        return None
    splices = [e for e in group if isinstance(e, TranscoderSplice)]
    if splices:
        if len(group) > 1:
            raise WorkbenchError(
                f"layer {index}'s MLP is spliced with a transcoder; other MLP edits conflict"
            )
        return _transcoder(splices[0], cache, layer.ln2.weight.shape[0], layer.ln2.weight.device)
    expert_edits = [e for e in group if isinstance(e, ExpertMask)]
    if isinstance(layer.mlp, Moe):
        if len(expert_edits) != len(group):
            raise WorkbenchError(
                f"layer {index} is a mixture of experts: neuron edits do not apply; mask experts instead"
            )
        return _experts_masked(handle, layer.mlp, expert_edits, index)
    if expert_edits:
        raise WorkbenchError(f"expert_mask: layer {index} of {handle.name} is not a mixture-of-experts layer")
    return activation_edited(layer.mlp, group, backend)


def checked_transcoder(transcoder, edit: TranscoderSplice, d_model: int, device):
    """The transcoder in eval mode on the model's device, refused if it cannot replace this MLP."""
    cfg = transcoder.cfg
    if (cfg.d_in, cfg.d_out) != (d_model, d_model):
        raise WorkbenchError(
            f"transcoder: {edit.path} maps {cfg.d_in} -> {cfg.d_out} features, but this model's MLP "
            f"maps {d_model} -> {d_model}; it was trained for another model"
        )
    if cfg.layer != edit.layer:
        raise WorkbenchError(
            f"transcoder: {edit.path} was trained on layer {cfg.layer}'s MLP, not layer {edit.layer}'s; "
            f"splice it at layer {cfg.layer}"
        )
    bad = [i for i, _ in edit.features or () if i >= cfg.width]
    if bad:
        raise WorkbenchError(
            f"transcoder: {edit.path} has features 0..{cfg.width - 1}, not {bad[:5]}; "
            "give feature indices below its width"
        )
    return transcoder.eval().to(device)


def _transcoder(edit: TranscoderSplice, cache, d_model: int, device) -> Sublayer:
    from workbench.transcoders.run import load_any
    from workbench.transcoders.splice import reconstruction

    key = TranscoderKey(edit.path, edit.layer)
    transcoder = None if cache is None else cache.transcoders.get(key)
    if transcoder is None:
        transcoder = checked_transcoder(load_any(edit.path), edit, d_model, device)
        if cache is not None:
            cache.transcoders.put(key, transcoder)
    else:
        checked_transcoder(transcoder, edit, d_model, device)  # feature indices of this edit
    features = edit.features

    def run(h: torch.Tensor) -> torch.Tensor:
        return reconstruction(transcoder, h.float(), features).to(h.dtype)

    return run


def _experts_masked(handle, moe: Moe, edits: list[ExpertMask], index: int) -> Sublayer:
    from workbench.experts.masking import check_masks

    check_masks(handle, edits)
    modes = {e.mode for e in edits}
    if len(modes) > 1:
        raise WorkbenchError(f"layer {index}: expert masks mix modes {sorted(modes)}; use one mode per layer")
    mode = modes.pop()
    experts = tuple(sorted({x for e in edits for x in e.experts}))

    def run(h: torch.Tensor) -> torch.Tensor:
        flat = h.reshape(-1, h.shape[-1])
        if mode == "reroute":
            _, weights, chosen = rerouted(F.linear(flat, moe.router), experts, moe.k, moe.renormalise)
        else:
            _, weights, chosen = moe.route(flat)
            weights = dropped(weights, chosen, experts)
        return moe.experts(flat, weights.to(h.dtype), chosen).view_as(h)

    return run


def activation_edited(mlp: MlpParams, group: list[Edit], backend: str | None = None) -> Sublayer:
    """A dense MLP under neuron masks (static, gathered once), then top-k / threshold per token."""
    d_mlp = mlp.w_out.shape[0]
    masked = sorted({i for e in group if isinstance(e, NeuronMask) for i in e.neurons})
    bad = [i for i in masked if not 0 <= i < d_mlp]
    if bad:
        raise WorkbenchError(f"neuron_mask: the MLP has neurons 0..{d_mlp - 1}, not {bad[:5]}")
    per_token = [e for e in group if isinstance(e, TopK | Threshold)]
    if masked:
        keep = torch.ones(d_mlp, dtype=torch.bool)
        keep[masked] = False
        mlp = gather_neurons(mlp, keep.nonzero().squeeze(1).to(mlp.w_out.device))
    if not per_token:
        return lambda h: mlp_dense(h.reshape(-1, h.shape[-1]), mlp).view_as(h)
    kept = mlp.w_out.shape[0]

    def run(h: torch.Tensor) -> torch.Tensor:
        flat = h.reshape(-1, h.shape[-1])
        a = activations(flat, mlp)  # [T, kept]: dense, the sets depend on it
        idx = None
        for edit in per_token:
            if isinstance(edit, Threshold):
                a = a.masked_fill(a.abs() < edit.tau, 0.0)
            else:
                k = min(edit.k, kept)
                idx = a.abs().topk(k, dim=-1).indices
                a = torch.zeros_like(a).scatter_(1, idx, a.gather(1, idx))
        if idx is not None and idx.shape[1] * 2 <= kept:  # sparse down-projection of the kept entries
            y = down_project_per_token(a.gather(1, idx), idx, mlp, backend=backend)
        else:
            y = a @ mlp.w_out + (0 if mlp.b_out is None else mlp.b_out)
        return y.view_as(h)

    return run
