"""Circuits through transcoders: which upstream features drive a target, and how much.

A target is a direction g in the residual stream at one token t: a downstream transcoder feature's
pre-activation (its encoder column pulled back through that layer's MLP norm) or a logit (an
unembedding column pulled back through the final norm). Norms are frozen at the token's own scale
(LayerNorm's centring is kept: it is linear). An upstream residual vector u written at position s
by layer l's MLP reaches g
- directly when s = t: u · g;
- through one head h of an attention layer m between them: A_m^h[t, s] · u · n_m,s(W_V^h W_O^h g),
  n_m,s being the frozen ln1 of layer m at s (the OV circuit times the pattern).
Feature i's attribution is z_i(s) · (f_dec,i · that path sum): input-dependent through z and the
frozen scales and patterns, input-invariant through f_dec,i · g. The error node of each layer and
position is the same sum for u = MLP(x) − TC(x): the part of the MLP the transcoder misses. Paths
through several attention layers, or through MLPs between the two, are not followed; with
`spliced` layers those MLPs are the transcoders themselves (errors there are then zero), and a
downstream feature's own attribution graph is the next step of the walk.

`connection_scores` is the input-invariant part alone: f_dec,i · (γ ⊙ f_enc,j) for features of two
transcoders, through the residual stream (norm scale dropped).

Definitions: docs/methods.md#circuits-through-transcoders.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import altair as alt
import pandas as pd
import torch

from workbench.errors import WorkbenchError
from workbench.models import ModelHandle
from workbench.models.bridge import unwrap
from workbench.models.hooks import hooks_attached
from workbench.results import Provenance, Result, register_result
from workbench.transcoders.data import mlp_hooks
from workbench.transcoders.model import Transcoder

DEFINITION = __doc__.split("\n\n", 1)[1].strip()


def _norm_weight(module) -> torch.Tensor:
    return unwrap(module).weight.detach().float()


def _centres(handle: ModelHandle) -> bool:
    """LayerNorm subtracts the mean (a linear step kept in the frozen norm); RMSNorm does not."""
    return getattr(handle.model.cfg, "normalization_type", "LN") in ("LN", "LNPre")


def pull_back(
    direction: torch.Tensor, gamma: torch.Tensor, scale: torch.Tensor, centre: bool
) -> torch.Tensor:
    """The residual-stream direction d with d · r = g · norm(r), the norm frozen at `scale` [..., 1]."""
    d = (gamma * direction) / scale
    return d - d.mean(-1, keepdim=True) if centre else d


@dataclass(frozen=True)
class Target:
    """`feature` (a transcoder feature's pre-activation at `layer`) or `logit` (of token id `index`)."""

    kind: str
    position: int
    index: int
    layer: int | None = None  # the transcoder's layer, for a feature target

    def describe(self) -> str:
        if self.kind == "feature":
            return f"feature {self.index} of layer {self.layer}'s transcoder at position {self.position}"
        return f"logit of token {self.index} at position {self.position}"


@contextlib.contextmanager
def _recording(handle: ModelHandle, names: list[str], seen: dict[str, torch.Tensor]):
    points = handle.hook_points
    missing = [n for n in names if n not in points]
    if missing:
        raise WorkbenchError(f"{handle.name} has no hook {missing[0]}: attribution needs it.")

    def keeper(name):
        def hook(module, inputs, output):
            seen[name] = output.detach().float()[0]

        return hook

    with hooks_attached([(points[n], keeper(n)) for n in names]):
        yield


@register_result
@dataclass(kw_only=True)
class AttributionResult(Result):
    kind = "attribution"
    title = "Circuit: upstream transcoder features of a target"

    model: str
    target: str
    target_value: float
    tokens: list[str]
    nodes: list[
        dict
    ]  # top nodes: {"kind", "layer", "position", "token", "feature", "activation", "attribution"}
    errors: list[dict]  # per upstream layer: {"layer", "attribution"} (summed over positions)
    feature_total: float
    provenance: Provenance
    through_heads: bool = True

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.nodes).assign(model=self.model)

    def charts(self) -> dict[str, alt.Chart]:
        rows = [
            {
                "node": f"L{n['layer']} {n['kind']} {'' if n['feature'] is None else n['feature']} "
                f"@{n['position']} {n['token']!r}",
                "attribution": n["attribution"],
            }
            for n in self.nodes
        ]
        return {
            "attribution": alt.Chart(pd.DataFrame(rows), width=320, height=14 * max(1, len(rows)))
            .mark_bar()
            .encode(x="attribution:Q", y=alt.Y("node:N", sort="-x"), tooltip=["node", "attribution"])
            .properties(title=f"{self.model}: {self.target}")
        }


@torch.inference_mode()
def attribute(
    handle: ModelHandle,
    tokens: torch.Tensor,
    transcoders: dict[int, Transcoder],
    target: Target,
    through_heads: bool = True,
    spliced: tuple[int, ...] = (),
    top_k: int = 20,
) -> AttributionResult:
    """Attributions of every upstream transcoder feature (and error node) to `target` on one sequence."""
    from workbench.transcoders.splice import mlp_replaced, transcoder_replacement

    tokens = tokens.reshape(1, -1)
    n_layers = handle.facts.n_layers
    end = target.layer if target.kind == "feature" else n_layers  # attention layers m < end... see below
    upstream = sorted(layer for layer in transcoders if layer < end)
    if target.kind == "feature" and target.layer not in transcoders:
        raise WorkbenchError(f"No transcoder for layer {target.layer}, the target feature's layer.")
    if not upstream:
        raise WorkbenchError("No transcoder upstream of the target: give one for an earlier layer.")
    names = [n for layer in upstream for n in mlp_hooks(layer)]
    attn_layers = list(range(upstream[0] + 1, min(end + 1, n_layers)))
    names += [f"blocks.{m}.ln1.hook_scale" for m in attn_layers]
    names += [f"blocks.{m}.attn.hook_pattern" for m in attn_layers] if through_heads else []
    if target.kind == "feature":
        names += [f"blocks.{target.layer}.ln2.hook_scale", mlp_hooks(target.layer)[0]]
    else:
        names += ["ln_final.hook_scale"]
    names = list(dict.fromkeys(names))
    seen: dict[str, torch.Tensor] = {}
    with contextlib.ExitStack() as stack:
        for layer in spliced:
            stack.enter_context(mlp_replaced(handle, layer, transcoder_replacement(transcoders[layer])))
        stack.enter_context(_recording(handle, names, seen))
        logits = handle.logits(tokens)[0].float()
    t = target.position
    centre = _centres(handle)
    blocks = handle.model.blocks
    if target.kind == "feature":
        tc = transcoders[target.layer]
        scale = seen[f"blocks.{target.layer}.ln2.hook_scale"][t]
        g = pull_back(
            tc.W_enc[:, target.index].float(), _norm_weight(blocks[target.layer].ln2), scale, centre
        )
        x = seen[mlp_hooks(target.layer)[0]][t]
        value = float(x @ tc.W_enc[:, target.index] + tc.b_enc[target.index])
    else:
        w_u = handle.model.unembed.W_U[:, target.index].detach().float()
        g = pull_back(w_u, _norm_weight(handle.model.ln_final), seen["ln_final.hook_scale"][t], centre)
        value = float(logits[t, target.index])

    # per attention layer m and head h: the direction an upstream vector at s must have, [heads, d]
    head_dirs = {}
    if through_heads:
        for m in attn_layers:
            attn = blocks[m].attn
            w_v, w_o = attn.W_V.detach().float(), attn.W_O.detach().float()  # [h, d, dh], [h, dh, d]
            q = torch.einsum("hdk,hk->hd", w_v, torch.einsum("hkd,d->hk", w_o, g))
            head_dirs[m] = q * _norm_weight(blocks[m].ln1)
            if centre:
                head_dirs[m] = head_dirs[m] - head_dirs[m].mean(-1, keepdim=True)

    def path_weights(layer: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """For a vector written by `layer`'s MLP: per position s, the weight of u · g and of u · dir_m,h."""
        direct = torch.zeros(tokens.shape[1])
        direct[t] = 1.0
        via = []
        for m in attn_layers:
            if m <= layer or m not in head_dirs:
                continue
            pattern = seen[f"blocks.{m}.attn.hook_pattern"][:, t, :]  # [h, s]
            scale = seen[f"blocks.{m}.ln1.hook_scale"][:, 0]  # [s]
            via.append((m, pattern / scale[None, :]))
        return direct, via

    nodes, errors, feature_total = [], [], 0.0
    for layer in upstream:
        tc = transcoders[layer]
        hook_in, hook_out = mlp_hooks(layer)
        x, y = seen[hook_in], seen[hook_out]
        out = tc(x)
        z = tc.dense(out.encoded)  # [T, width]
        direct, via = path_weights(layer)
        dec = tc.W_dec.float()
        # feature i at position s: z_i(s) · (direct[s] (f_i · g) + Σ_m,h coef[m][h, s] (f_i · dir_m,h))
        per = z * direct[:, None] * (dec @ g)[None, :]
        for m, coef in via:
            per = per + z * (coef.T @ (dec @ head_dirs[m].T).T)  # [s, h] @ [h, width]
        error = y - out.y_hat
        err = direct * (error @ g)
        for m, coef in via:
            err = err + (coef.T * (error @ head_dirs[m].T)).sum(-1)
        if layer in spliced:
            err = torch.zeros_like(err)
        errors.append({"layer": layer, "attribution": float(err.sum())})
        feature_total += float(per.sum())
        positions, features = per.nonzero(as_tuple=True)
        for s, i in zip(positions.tolist(), features.tolist(), strict=True):
            nodes.append(_node("feature", layer, s, i, float(z[s, i]), float(per[s, i]), handle, tokens))
        for s in err.nonzero().squeeze(1).tolist():
            nodes.append(
                _node("error", layer, s, None, float(error[s].norm()), float(err[s]), handle, tokens)
            )
    nodes.sort(key=lambda n: -abs(n["attribution"]))
    provenance = Provenance(
        model=handle.facts.to_dict(),
        data={"tokens": tokens[0].tolist()},
        definition=DEFINITION,
        settings={
            "target": target.__dict__,
            "through_heads": through_heads,
            "spliced": list(spliced),
            "transcoders": {str(k): v.cfg.to_dict() for k, v in transcoders.items()},
        },
    )
    return AttributionResult(
        model=handle.name,
        target=target.describe(),
        target_value=value,
        tokens=[handle.tokenizer.decode([i]) for i in tokens[0].tolist()],
        nodes=nodes[:top_k],
        errors=errors,
        feature_total=feature_total,
        provenance=provenance,
        through_heads=through_heads,
    )


def _node(kind, layer, position, feature, activation, attribution, handle, tokens) -> dict:
    return {
        "kind": kind,
        "layer": layer,
        "position": position,
        "token": handle.tokenizer.decode([int(tokens[0, position])]),
        "feature": feature,
        "activation": activation,
        "attribution": attribution,
    }


def connection_scores(
    handle: ModelHandle,
    upstream: Transcoder,
    downstream: Transcoder,
    feature: int | None = None,
    top: int = 20,
) -> list[dict]:
    """Input-invariant scores f_dec,i · (γ ⊙ f_enc,j) (centred for LayerNorm), largest |score| first.

    With `feature`, the upstream features of that one downstream feature; else the top pairs overall.
    """
    if upstream.cfg.layer >= downstream.cfg.layer:
        raise WorkbenchError("The upstream transcoder's layer must come before the downstream one's.")
    gamma = _norm_weight(handle.model.blocks[downstream.cfg.layer].ln2)
    enc = downstream.W_enc.detach().float() * gamma[:, None]  # [d, width_down]
    if _centres(handle):
        enc = enc - enc.mean(0, keepdim=True)
    if feature is not None:
        scores = upstream.W_dec.detach().float() @ enc[:, feature]
        best = scores.abs().topk(min(top, len(scores))).indices.tolist()
        return [{"upstream": i, "downstream": feature, "score": float(scores[i])} for i in best]
    scores = upstream.W_dec.detach().float() @ enc  # [width_up, width_down]
    flat = scores.abs().flatten().topk(min(top, scores.numel())).indices
    width = scores.shape[1]
    return [
        {"upstream": int(f // width), "downstream": int(f % width), "score": float(scores.flatten()[f])}
        for f in flat.tolist()
    ]
