"""Routing statistics folded in flight, per MoE layer; memory does not grow with tokens.

Definitions: docs/methods.md#expert-routing-and-specialization.

For each layer: expert load, router probability mass, router entropy per token, the co-selection
matrix, one expert × label table per label (assignments weighted 1/k), and the joint table of
adjacent layers' choices (k × k pairs per token, each weighted 1/k²). `summary()` turns them into
the numbers a result reports: balance, entropy, NMI per label, spec(e, label), adjacent NMI.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from workbench.experts.information import (
    mutual_information,
    normalised_entropy,
    normalised_mutual_information,
)
from workbench.experts.labels import Labeller
from workbench.probes.sinks import Additive

TOP_TOKENS = 10
MIN_TOKEN_COUNT = 20  # a token must occur this often to be listed among an expert's top tokens
_ROUTING = re.compile(r"^routing\.blocks\.(\d+)\.(router_logits|topk_indices)$")


@dataclass
class LayerCounts(Additive):
    additive = ("load", "prob_sum", "coselect", "joint", "adjacent", "entropy_sum", "tokens")

    n_experts: int
    label_sizes: dict[str, int]
    load: torch.Tensor = field(init=False)  # [E] tokens that chose e
    prob_sum: torch.Tensor = field(init=False)  # [E] Σ_t softmax(r_t)_e
    coselect: torch.Tensor = field(init=False)  # [E, E] tokens that chose both (diagonal = load)
    joint: dict[str, torch.Tensor] = field(init=False)  # label -> [E, classes], weight 1/k per pair
    adjacent: torch.Tensor = field(init=False)  # [E, E'] with the next routed layer, weight 1/k² per pair
    entropy_sum: float = 0.0
    tokens: int = 0

    def __post_init__(self) -> None:
        e = self.n_experts
        self.load = torch.zeros(e, dtype=torch.float64)
        self.prob_sum = torch.zeros(e, dtype=torch.float64)
        self.coselect = torch.zeros(e, e, dtype=torch.float64)
        self.joint = {n: torch.zeros(e, size, dtype=torch.float64) for n, size in self.label_sizes.items()}
        self.adjacent = torch.zeros(e, e, dtype=torch.float64)


def one_hot_choices(indices: torch.Tensor, n_experts: int) -> torch.Tensor:
    """[tokens, k] expert indices → [tokens, E] float64 with a 1 for every chosen expert."""
    chosen = torch.zeros(indices.shape[0], n_experts, dtype=torch.float64)
    return chosen.scatter_(1, indices.long(), 1.0)


class RoutingStats(Additive):
    """Accumulates every layer's routing counts; feed it with `add(choices, meta)` once per batch.

    Counts and float64 sums, so stats of disjoint tokens merge (`merge`) into the stats of all of them."""

    additive = ("layers",)

    def merge(self, other: RoutingStats) -> None:
        if (self.n_experts, self.k, self.labeller.names) != (other.n_experts, other.k, other.labeller.names):
            raise ValueError("cannot merge routing statistics of other experts, k or labels")
        super().merge(other)

    def __init__(self, n_experts: int, k: int, labeller: Labeller) -> None:
        self.n_experts, self.k, self.labeller = n_experts, k, labeller
        self.layers: dict[int, LayerCounts] = {}

    def add(
        self, choices: dict[int, tuple[torch.Tensor, torch.Tensor]], meta: dict[str, torch.Tensor]
    ) -> None:
        """`choices`: layer -> (router logits [T, E], chosen experts [T, k]) for the same T tokens."""
        labels = self.labeller(meta)
        sizes = {n: self.labeller.size(n) for n in self.labeller.names}
        hot = {}
        for layer, (logits, indices) in sorted(choices.items()):
            counts = self.layers.setdefault(layer, LayerCounts(self.n_experts, sizes))
            chosen = one_hot_choices(indices, self.n_experts)
            probs = torch.softmax(logits.double(), dim=-1)
            counts.load += chosen.sum(0)
            counts.prob_sum += probs.sum(0)
            counts.coselect += chosen.T @ chosen
            counts.entropy_sum += float(-(probs * probs.clamp_min(1e-300).log()).sum())
            counts.tokens += len(indices)
            weighted = chosen.T / self.k  # [E, T]
            for name, label in labels.items():
                counts.joint[name].index_add_(1, label, weighted)
            hot[layer] = chosen
        ordered = sorted(hot)
        for this, after in zip(ordered, ordered[1:], strict=False):
            self.layers[this].adjacent += (hot[this].T / self.k) @ (hot[after] / self.k)

    def summary(self, decode: Callable[[int], str] | None = None) -> list[dict]:
        """One dict of reported numbers per layer (see the module docstring)."""
        ordered = sorted(self.layers)
        return [
            summarise_layer(layer, self.layers[layer], self.k, self.labeller, decode, layer != ordered[-1])
            for layer in ordered
        ]


def summarise_layer(
    layer: int, c: LayerCounts, k: int, labeller: Labeller, decode: Callable | None, has_next: bool
) -> dict:
    t = max(1, c.tokens)
    f = c.load / t  # share of tokens that chose e; sums to k
    p = c.prob_sum / t
    mean = f.mean().item()
    out = {
        "layer": layer,
        "tokens": c.tokens,
        "load": f.tolist(),
        "load_cv": (f.std(unbiased=False) / mean).item() if mean > 0 else float("nan"),
        "load_max_over_mean": (f.max() / mean).item() if mean > 0 else float("nan"),
        "load_entropy": normalised_entropy(c.load),
        "balance_loss": (c.n_experts * (f / k) * p).sum().item(),
        "router_entropy_mean": c.entropy_sum / t,
        "router_entropy_normalised": c.entropy_sum / t / math.log(c.n_experts),
        "coselection": (c.coselect / t).tolist(),
        "nmi": {n: normalised_mutual_information(j) for n, j in c.joint.items()},
        "mi": {n: mutual_information(j) for n, j in c.joint.items()},
        "spec_baseline": k / c.n_experts,
        "spec": {},
        "adjacent_nmi": normalised_mutual_information(c.adjacent) if has_next else None,
    }
    for name, joint in c.joint.items():
        per_class = joint.sum(0)  # tokens of each class (each token's k pairs weigh 1 together)
        spec = k * joint / per_class.clamp_min(1e-12)  # spec(e, D) = #{t ∈ D: e chosen} / #{t ∈ D}
        if name == "token":
            out["top_tokens"] = top_tokens(spec, per_class, decode)
        else:
            out["spec"][name] = {
                cls: spec[:, i].tolist() for i, cls in enumerate(labeller.classes(name)) if per_class[i] > 0
            }
    return out


def top_tokens(spec: torch.Tensor, per_token: torch.Tensor, decode: Callable | None) -> list[list[dict]]:
    """Per expert, the frequent tokens it takes the largest share of: [{token, text, spec, count}]."""
    frequent = per_token >= MIN_TOKEN_COUNT
    ranked = []
    for e in range(spec.shape[0]):
        scores = torch.where(frequent, spec[e], torch.tensor(-1.0, dtype=spec.dtype))
        top = scores.topk(min(TOP_TOKENS, int(frequent.sum()))).indices.tolist()
        ranked.append(
            [
                {
                    "token": i,
                    "text": decode(i) if decode else str(i),
                    "spec": spec[e, i].item(),
                    "count": int(per_token[i]),
                }
                for i in top
            ]
        )
    return ranked


class RoutingStatsReducer(Additive):
    """Feeds a routing capture (RoutingProbe values) into RoutingStats."""

    additive = ("stats",)

    def __init__(self, stats: RoutingStats) -> None:
        self.stats = stats

    def update(self, values: dict[str, torch.Tensor], meta: dict[str, torch.Tensor]) -> None:
        parts: dict[int, dict[str, torch.Tensor]] = {}
        for name, value in values.items():
            m = _ROUTING.match(name)
            if m:
                parts.setdefault(int(m.group(1)), {})[m.group(2)] = value
        choices = {layer: (p["router_logits"], p["topk_indices"]) for layer, p in parts.items()}
        if choices:
            self.stats.add(choices, meta)
