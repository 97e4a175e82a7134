"""MoEfication (docs/methods.md#moefication): read a dense MLP as E experts; how much do the best k carry?

Per layer: the neurons are split into E groups (`partition`); a group's score for a token is
Σ_{i∈group} max(a_i, 0). Each token keeps its best k groups, chosen either by the true scores (oracle
routing) or by a small router trained on the MLP input of train-split tokens to predict the score
distribution. Reported on held-out tokens, for every k:
- captured mass: Σ_{kept groups} score / Σ_groups score (mean over tokens; a token with no positive
  activation counts as fully captured);
- captured output: 1 − ‖y − y_k‖ / ‖y‖ (mean over tokens), y = Σ_i a_i W_out[i] the MLP output without its
  bias and y_k the same sum over the kept groups' neurons;
and the routing statistics of the learned router's top-k choices (load, NMI per label, adjacent NMI).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import altair as alt
import pandas as pd
import torch
import torch.nn.functional as F

from workbench.calibration import CalibrationSource, calibration_windows, source_of
from workbench.corpus import TokenWindows
from workbench.errors import WorkbenchError
from workbench.experts import defaults
from workbench.experts.labels import Labeller
from workbench.experts.partition import (
    coactivation_groups,
    group_capacities,
    kmeans_groups,
    random_groups,
)
from workbench.experts.routing_stats import RoutingStats
from workbench.models import ModelHandle
from workbench.probes.sinks import Additive
from workbench.progress import tracked
from workbench.results import Provenance, Result, register_result
from workbench.settings import Settings

ACTIVATIONS = {
    "relu": torch.relu,
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}
ROUTER_HIDDEN = 128
ROUTER_EPOCHS = 16  # passes over the training tokens, within [ROUTER_MIN_STEPS, ROUTER_MAX_STEPS] steps
ROUTER_MIN_STEPS, ROUTER_MAX_STEPS = 100, 600
ROUTER_BATCH = 512


def router_steps(n_tokens: int) -> int:
    """Optimiser steps for a router trained on n tokens: 16 epochs, at least 100 and at most 600 steps."""
    return max(ROUTER_MIN_STEPS, min(ROUTER_MAX_STEPS, -(-ROUTER_EPOCHS * n_tokens // ROUTER_BATCH)))


def hook_names(layer: int) -> tuple[str, str]:
    """(MLP input, neuron activation a) hooks of a layer."""
    return f"blocks.{layer}.mlp.hook_in", f"blocks.{layer}.mlp.hook_post"


@dataclass
class MlpWeights:
    """One dense MLP's weights in TransformerLens layout: W_in/W_gate [d_model, d_mlp], W_out [d_mlp, d]."""

    w_in: torch.Tensor
    w_out: torch.Tensor
    act: str
    w_gate: torch.Tensor | None = None
    b_in: torch.Tensor | None = None
    b_out: torch.Tensor | None = None

    @classmethod
    def of(cls, handle: ModelHandle, layer: int) -> MlpWeights:
        mlp = handle.model.blocks[layer].mlp
        act = handle.facts.act_fn
        if act not in ACTIVATIONS:
            raise WorkbenchError(
                f"MoEfication does not know activation {act!r} yet ({', '.join(ACTIVATIONS)})."
            )

        def get(name: str):
            value = getattr(mlp, name, None)
            return None if value is None else value.detach().float()

        gate = get("W_gate") if handle.facts.gated_mlp else None
        return cls(get("W_in"), get("W_out"), act, gate, get("b_in"), get("b_out"))

    def activation(self, h: torch.Tensor, neurons: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        """a for the given neurons: σ(h W_in + b), or SiLU(h W_gate) ⊙ (h W_up) when gated."""
        pre = h @ self.w_in[:, neurons]
        if self.b_in is not None:
            pre = pre + self.b_in[neurons]
        if self.w_gate is None:
            return ACTIVATIONS[self.act](pre)
        return ACTIVATIONS[self.act](h @ self.w_gate[:, neurons]) * pre


def group_forward(
    weights: MlpWeights, labels: torch.Tensor, h: torch.Tensor, chosen: torch.Tensor
) -> torch.Tensor:
    """The MoEfied MLP: for each token only the neurons of its chosen groups [T, k] are computed."""
    out = torch.zeros(h.shape[0], weights.w_out.shape[1], dtype=h.dtype)
    for group in chosen.unique().tolist():
        tokens = (chosen == group).any(dim=1).nonzero().squeeze(1)
        neurons = (labels == group).nonzero().squeeze(1)
        out.index_add_(0, tokens, weights.activation(h[tokens], neurons) @ weights.w_out[neurons])
    return out if weights.b_out is None else out + weights.b_out


def group_scores(a: torch.Tensor, membership: torch.Tensor) -> torch.Tensor:
    """[T, E]: Σ_{i∈group} max(a_i, 0)."""
    return a.clamp_min(0) @ membership


class GroupRouter(torch.nn.Module):
    """Predicts a token's group-score distribution from the MLP input: Linear → ReLU → Linear."""

    def __init__(self, d_model: int, n_groups: int, hidden: int = ROUTER_HIDDEN) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(d_model, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, n_groups)
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


def train_router(
    h: torch.Tensor, scores: torch.Tensor, steps: int | None = None, batch: int = ROUTER_BATCH, seed: int = 0
) -> GroupRouter:
    """Fit a router by cross-entropy against the score distribution s_g / Σ s (Adam, cosine decay)."""
    steps = router_steps(len(h)) if steps is None else steps
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    router = GroupRouter(h.shape[1], scores.shape[1])
    total = scores.sum(1, keepdim=True)
    target = torch.where(total > 0, scores / total.clamp_min(1e-12), 1.0 / scores.shape[1])
    optimiser = torch.optim.Adam(router.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    with torch.enable_grad():
        for _ in range(steps):
            rows = torch.randint(0, len(h), (min(batch, len(h)),), generator=generator)
            loss = -(target[rows] * torch.log_softmax(router(h[rows]), -1)).sum(-1).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    return router.eval()


class CoactivationReducer(Additive):
    """Co-firing counts [d_mlp, d_mlp] per layer (a_i > 0 and a_j > 0 on the same token)."""

    additive = ("counts",)

    def __init__(self, layers: list[int]) -> None:
        self.layers = layers
        self.counts: dict[int, torch.Tensor] = {}

    def update(self, values: dict[str, torch.Tensor], meta: dict[str, torch.Tensor]) -> None:
        for layer in self.layers:
            fired = (values[hook_names(layer)[1]] > 0).float()
            self.counts[layer] = self.counts.get(layer, 0) + fired.T @ fired


class RouterDataReducer(Additive):
    """Keeps each layer's MLP input and group scores, the router's training data (merging concatenates
    them, the reducer merged in first)."""

    additive = ("inputs", "scores")

    def __init__(self, memberships: dict[int, torch.Tensor]) -> None:
        self.memberships = memberships
        self.inputs: dict[int, list[torch.Tensor]] = {layer: [] for layer in memberships}
        self.scores: dict[int, list[torch.Tensor]] = {layer: [] for layer in memberships}

    def update(self, values: dict[str, torch.Tensor], meta: dict[str, torch.Tensor]) -> None:
        for layer, membership in self.memberships.items():
            inp, post = hook_names(layer)
            self.inputs[layer].append(values[inp].float())
            self.scores[layer].append(group_scores(values[post].float(), membership))


def captured_shares(
    scores: torch.Tensor, group_out: torch.Tensor, order: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token and k (groups taken in `order`): (captured mass [T, E], captured output [T, E])."""
    total = scores.sum(1, keepdim=True)
    mass = scores.gather(1, order).cumsum(1)
    mass = torch.where(total > 0, mass / total.clamp_min(1e-30), torch.ones_like(mass))
    y = group_out.sum(1, keepdim=True)  # [T, 1, d]
    kept = group_out.gather(1, order[..., None].expand_as(group_out)).cumsum(1)  # [T, E, d]
    norm = y.norm(dim=-1).clamp_min(1e-30)
    return mass, 1 - (y - kept).norm(dim=-1) / norm


class CapturedMassReducer(Additive):
    """Folds captured mass and output per k, with oracle and router choices, and the router's routing."""

    additive = ("sums", "recall", "tokens", "stats")

    def __init__(self, weights, memberships, labels_of, routers, k: int, stats: RoutingStats) -> None:
        self.memberships = memberships
        self.routers, self.k, self.stats = routers, k, stats
        n_groups = next(iter(memberships.values())).shape[1]
        # each group's neurons and their W_out rows, gathered once rather than on every batch
        self.groups = {
            layer: [(labels_of[layer] == g).nonzero().squeeze(1) for g in range(n_groups)]
            for layer in memberships
        }
        self.group_w_out = {
            layer: [weights[layer].w_out[idx] for idx in self.groups[layer]] for layer in memberships
        }
        self.sums = {
            layer: {name: torch.zeros(n_groups, dtype=torch.float64) for name in SHARES}
            for layer in memberships
        }
        self.recall = dict.fromkeys(memberships, 0.0)
        self.tokens = 0

    def update(self, values: dict[str, torch.Tensor], meta: dict[str, torch.Tensor]) -> None:
        choices = {}
        for layer, membership in self.memberships.items():
            inp, post = hook_names(layer)
            a, h = values[post].float(), values[inp].float()
            scores = group_scores(a, membership)
            group_out = torch.stack(
                [
                    a[:, idx] @ w_out
                    for idx, w_out in zip(self.groups[layer], self.group_w_out[layer], strict=True)
                ],
                dim=1,
            )
            logits = self.routers[layer](h)
            oracle = scores.argsort(dim=1, descending=True)
            routed = logits.argsort(dim=1, descending=True)
            for tag, order in (("", oracle), ("_router", routed)):
                mass, output = captured_shares(scores, group_out, order)
                self.sums[layer]["captured_mass" + tag] += mass.double().sum(0)
                self.sums[layer]["captured_output" + tag] += output.double().sum(0)
            hits = (routed[:, : self.k, None] == oracle[:, None, : self.k]).any(-1).float().sum(1)
            self.recall[layer] += hits.sum().item() / self.k
            choices[layer] = (logits, routed[:, : self.k])
        self.stats.add(choices, meta)
        self.tokens += len(meta["token"])


SHARES = ("captured_mass", "captured_mass_router", "captured_output", "captured_output_router")


@register_result
@dataclass(kw_only=True)
class MoefyResult(Result):
    kind = "moefy"
    title = "MoEfication: dense MLPs read as experts"

    model: str
    experts: int
    method: str
    k: int
    tokens: int
    train_tokens: int
    layers: list[dict]
    provenance: Provenance
    group_sizes: list[int] = field(default_factory=list)

    def compact(self) -> dict:
        keep = ("layer", *SHARES, "router_recall")
        return {
            "model": self.model,
            "experts": self.experts,
            "method": self.method,
            "k": self.k,
            "tokens": self.tokens,
            "layers": [{key: x[key] for key in keep} | {"nmi": x["routing"]["nmi"]} for x in self.layers],
        }

    def table(self) -> pd.DataFrame:
        rows = []
        for x in self.layers:
            row = {"layer": x["layer"]}
            for name in SHARES:
                row[f"{name}@{self.k}"] = x[name][str(self.k)]
            row["router_recall"] = x["router_recall"]
            row |= {f"nmi_{n}": v for n, v in x["routing"]["nmi"].items()}
            rows.append(row)
        return pd.DataFrame(rows).assign(model=self.model, method=self.method, experts=self.experts)

    def charts(self) -> dict[str, alt.Chart]:
        rows = [
            {
                "layer": x["layer"],
                "k": int(k),
                "share": v,
                "measure": name.replace("_router", ""),
                "routing": "router" if name.endswith("_router") else "oracle",
            }
            for x in self.layers
            for name in SHARES
            for k, v in x[name].items()
        ]
        return {
            "captured": alt.Chart(pd.DataFrame(rows), width=220, height=160)
            .mark_line(point=True)
            .encode(
                x=alt.X("k:O", title="groups kept per token (k)"),
                y=alt.Y("share:Q", scale=alt.Scale(domain=[0, 1])),
                color="layer:N",
                strokeDash="routing:N",
                column="measure:N",
                tooltip=["layer", "k", "routing", "measure", "share"],
            )
            .properties(title=f"{self.model}: {self.experts} groups by {self.method}")
        }


def partition_layers(
    handle: ModelHandle,
    layers: list[int],
    n_groups: int,
    method: str,
    calibration,
    batch_size,
    seed,
    progress,
) -> dict[int, torch.Tensor]:
    from workbench.probes.capture import ActivationProbe, ReducerSink, capture

    if method == "kmeans":
        return {layer: kmeans_groups(handle, layer, n_groups, seed) for layer in layers}
    if method == "random":
        return {layer: random_groups(handle.facts.d_mlp, n_groups, seed + layer) for layer in layers}
    reducer = CoactivationReducer(layers)
    probe = ActivationProbe([hook_names(layer)[1] for layer in layers])
    capture(handle, calibration, [probe], ReducerSink([reducer]), batch_size, progress)
    return {layer: coactivation_groups(reducer.counts[layer], n_groups, seed) for layer in layers}


DEFINITION = (
    "MoEfication. Groups: {method} ({n} groups of d_mlp/E neurons). Score of group g for a "
    "token: Σ_{{i∈g}} max(a_i, 0), a the neuron activation meeting W_out. captured_mass@k = share of Σ_g "
    "score in the token's best k groups; captured_output@k = 1 − ‖y − y_k‖/‖y‖, y = Σ_i a_i W_out[i] (no "
    "bias), y_k over the kept groups' neurons; means over held-out tokens. Oracle routing keeps the k "
    "highest true scores; _router keeps the k highest outputs of a router (Linear {hidden} → ReLU → "
    "Linear) trained on train-split tokens' MLP input by cross-entropy to s_g/Σs. router_recall = share "
    "of the oracle top-k the router finds. routing = the router's top-k choices measured like an MoE's "
    "(see the experts result's definition). "
    "See docs/methods.md#moefication."
)


@dataclass(frozen=True, kw_only=True)
class MoefySettings(Settings):
    """How the MLPs are split and routed; the defaults come from `experts/defaults.py`."""

    experts: int  # groups (experts) per MLP
    k: int = defaults.MOEFY_K  # groups kept per token for the routing statistics
    method: str = defaults.MOEFY_METHOD  # kmeans, coactivation or random (the chance baseline)
    labels: tuple[str, ...] = defaults.MOEFY_LABELS
    train_tokens: int = defaults.MOEFY_TRAIN_TOKENS  # router-training tokens, when no windows are given
    batch_size: int = 8
    seed: int = 0  # partition, routers; the router-training windows use seed + 1 (`moefy_calibration`)

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(self.labels))


def moefy_calibration(
    handle: ModelHandle, source: CalibrationSource, context: int, n_tokens: int, seed: int
) -> TokenWindows:
    """The routers' training windows: `n_tokens` of `source` in whole `context` windows, chosen with
    seed + 1 (so that they never coincide with a selection of the measured text made with the seed)."""
    return calibration_windows(handle, source, context, n_tokens, seed=seed + 1)


def run_moefy(
    handle: ModelHandle,
    windows: TokenWindows,
    settings: MoefySettings,
    *,
    calibration: CalibrationSource | TokenWindows | None = None,
    progress: bool = True,
) -> MoefyResult:
    """Partition every layer's MLP, train routers on calibration windows, measure on `windows`.

    `calibration`: the routers' training windows as they are, or a `CalibrationSource` of which
    `settings.train_tokens` are drawn with seed + 1 (`moefy_calibration`); by default the train split of
    `windows`' corpus (`workbench.calibration`).
    """
    from workbench.neurons import neuron_hooks
    from workbench.probes.capture import ActivationProbe, ReducerSink, capture

    n_groups, k, method, seed = settings.experts, settings.k, settings.method, settings.seed
    labels, batch_size = settings.labels, settings.batch_size
    if method not in defaults.MOEFY_METHODS:
        methods = ", ".join(defaults.MOEFY_METHODS)
        raise WorkbenchError(f"Unknown MoEfication method {method!r}; use one of {methods}.")
    layers = [h.layer for h in neuron_hooks(handle)]  # refuses MoE models with a clear message
    d_mlp = handle.facts.d_mlp
    if not 2 <= n_groups <= d_mlp:
        raise WorkbenchError(f"--experts must be between 2 and d_mlp = {d_mlp}, got {n_groups}.")
    if not 1 <= k <= n_groups:
        raise WorkbenchError(f"--k must be between 1 and --experts = {n_groups}, got {k}.")
    train_windows = calibration
    if not isinstance(calibration, TokenWindows):
        source = calibration or source_of(windows, "moefy's routers")
        train_windows = moefy_calibration(handle, source, windows.context, settings.train_tokens, seed)
    labels_of = partition_layers(handle, layers, n_groups, method, train_windows, batch_size, seed, progress)
    memberships = {layer: F.one_hot(g.long(), n_groups).float() for layer, g in labels_of.items()}
    names = [name for layer in layers for name in hook_names(layer)]
    data = RouterDataReducer(memberships)
    capture(handle, train_windows, [ActivationProbe(names)], ReducerSink([data]), batch_size, progress)
    routers = {}
    for layer in tracked(layers, unit="layers", bar_unit="it", desc="train routers", show=progress):
        routers[layer] = train_router(torch.cat(data.inputs[layer]), torch.cat(data.scores[layer]), seed=seed)
    del data
    weights = {layer: MlpWeights.of(handle, layer) for layer in layers}
    labeller = Labeller.build(list(labels), windows.domains, handle.tokenizer, handle.facts.d_vocab)
    stats = RoutingStats(n_groups, k, labeller)
    reducer = CapturedMassReducer(weights, memberships, labels_of, routers, k, stats)
    with torch.inference_mode():
        capture(handle, windows, [ActivationProbe(names)], ReducerSink([reducer]), batch_size, progress)
    routing = {x["layer"]: x for x in stats.summary()}
    out_layers = []
    for layer in layers:
        body = {"layer": layer}
        for name in SHARES:
            means = reducer.sums[layer][name] / max(1, reducer.tokens)
            body[name] = {str(i + 1): v for i, v in enumerate(means.tolist())}
        body["router_recall"] = reducer.recall[layer] / max(1, reducer.tokens)
        r = routing[layer]
        body["routing"] = {key: r[key] for key in ("load", "load_cv", "nmi", "adjacent_nmi", "spec")}
        out_layers.append(body)
    provenance = Provenance(
        model=handle.facts.to_dict(),
        data=windows.slice_info | {"router_training": train_windows.slice_info},
        definition=DEFINITION.format(method=method, n=n_groups, hidden=ROUTER_HIDDEN),
        settings={
            "method": method,
            "experts": n_groups,
            "k": k,
            "labels": list(labels),
            "router": {
                "hidden": ROUTER_HIDDEN,
                "steps": router_steps(train_windows.n_tokens),
                "lr": 3e-3,
                "batch": ROUTER_BATCH,
            },
            "batch_size": batch_size,
        },
        seed=seed,
    )
    return MoefyResult(
        model=handle.name,
        experts=n_groups,
        method=method,
        k=k,
        tokens=reducer.tokens,
        train_tokens=train_windows.n_tokens,
        layers=out_layers,
        provenance=provenance,
        group_sizes=group_capacities(d_mlp, n_groups).tolist(),
    )
