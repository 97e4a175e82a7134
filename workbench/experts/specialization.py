"""`workbench experts`: routing balance and specialization of a mixture-of-experts model, as a result.

One capture pass with the routing probe feeds RoutingStats (no store). The optional baseline is a
randomly initialised copy of the same architecture, measured on the same windows: what the
statistics look like before any training, so that specialization can be told from chance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import altair as alt
import pandas as pd
import torch

from workbench.corpus import TokenWindows
from workbench.errors import WorkbenchError
from workbench.experts import defaults
from workbench.experts.labels import Labeller
from workbench.experts.routing_stats import RoutingStats, RoutingStatsReducer
from workbench.models import ModelHandle, load_model
from workbench.results import Provenance, Result, register_result
from workbench.settings import Settings

if TYPE_CHECKING:
    from workbench.scale.cluster import Workers

DEFINITION = (
    "load f_e = share of tokens whose top-k holds e (sums to k); load_cv = std/mean of f "
    "(population std); load_entropy = H(f/k)/log E; balance_loss = E·Σ_e (f_e/k)·P_e, P_e the mean router "
    "probability (1 when balanced); router entropy = H(softmax(r_t)) in nats, mean over tokens; "
    "spec(e, D) = #{t∈D: e chosen}/#{t∈D} against the uniform k/E; NMI(expert; label) = I/min(H(expert), "
    "H(label)) counted over assignments, each token's k (token, expert) pairs weighted 1/k; adjacent_nmi = "
    "NMI of layer l's and layer l+1's choices, k×k pairs per token weighted 1/k². Labels: domain (of the "
    "token's document), token_class (letters, digits, punctuation, whitespace, mixed, special: of the "
    "token's decoded text, stripped), position (in the document: 0, 1-3, 4-15, 16-63, 64-255, 256+), "
    "token id. "
    "See docs/methods.md#expert-routing-and-specialization."
)
SUMMARY_KEYS = ("layer", "load_cv", "router_entropy_mean", "nmi", "adjacent_nmi")


def randomly_initialised(handle: ModelHandle, seed: int = 0) -> ModelHandle:
    """A fresh copy of `handle`'s architecture with Hugging Face's initialisation: N(0, initializer_range)
    for matrices and expert tensors, ones for norm weights, zeros for biases."""
    copy = load_model(str(handle.facts.checkpoint), device=str(handle.device), progress=False)
    hf = copy.hf_model
    std = getattr(hf.config, "initializer_range", 0.02)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=generator) * std)
            elif "norm" in name or ".ln" in name:
                p.fill_(1.0)
            else:
                p.zero_()
    copy.facts = type(copy.facts)(
        **{**copy.facts.to_dict(), "name": f"{handle.name} (random init, seed {seed})"}
    )
    return copy


def routing_summary(
    handle: ModelHandle,
    windows: TokenWindows,
    labels: list[str],
    batch_size: int,
    progress: bool,
    workers: Workers | None = None,
    random_init_seed: int | None = None,
) -> tuple[list[dict], Labeller]:
    """Routing statistics of every MoE layer over `windows`, folded here or (`workers`) on Ray workers;
    `random_init_seed` says that `handle` is `randomly_initialised` with it (what workers rebuild)."""
    from workbench.probes.capture import RoutingProbe
    from workbench.scale.fold import fold

    if not handle.facts.moe:
        raise WorkbenchError(
            f"{handle.name} is a dense model: it has no experts to measure. Use a mixture-of-experts model "
            "(tiny-moe), or `workbench moefy` to split a dense MLP into experts."
        )
    vocab = handle.facts.d_vocab
    labeller = Labeller.build(labels, windows.domains, handle.tokenizer, vocab)
    stats = RoutingStats(handle.facts.n_experts, handle.facts.experts_per_token, labeller)
    reducer = RoutingStatsReducer(stats)
    recipe = None
    if workers is not None:
        from workbench.scale.recipe import ModelRecipe

        recipe = ModelRecipe.of(handle, random_init_seed)
    fold(
        handle,
        windows,
        [RoutingProbe()],
        [reducer],
        batch_size=batch_size,
        progress=progress,
        workers=workers,
        recipe=recipe,
    )
    stats = reducer.stats
    return stats.summary(decode=lambda i: handle.tokenizer.decode([i])), labeller


@register_result
@dataclass(kw_only=True)
class ExpertsResult(Result):
    kind = "experts"
    title = "Expert routing and specialization"

    model: str
    tokens: int
    n_experts: int
    k: int
    labels: list[str]
    layers: list[dict]
    provenance: Provenance
    baseline: str | None = None  # what the baseline layers are, e.g. a randomly initialised copy
    baseline_layers: list[dict] = field(default_factory=list)

    def compact(self) -> dict:
        """The JSON the CLI prints: per layer load, balance, entropy, NMI per label, adjacent NMI."""
        keep = ("layer", "load", "load_cv", "router_entropy_mean", "nmi", "adjacent_nmi")
        body = {
            "model": self.model,
            "tokens": self.tokens,
            "layers": [{k: layer[k] for k in keep} for layer in self.layers],
        }
        if self.baseline:
            body["baseline"] = {"what": self.baseline, "layers": self.baseline_layers}
        return body

    def mean_nmi(self, label: str, baseline: bool = False) -> float:
        layers = self.baseline_layers if baseline else self.layers
        return sum(x["nmi"][label] for x in layers) / len(layers)

    def table(self) -> pd.DataFrame:
        rows = []
        for which, layers in (("model", self.layers), ("baseline", self.baseline_layers)):
            for x in layers:
                row = {"of": which, "layer": x["layer"], "load_cv": x["load_cv"]}
                row["router_entropy"] = x["router_entropy_mean"]
                row |= {f"nmi_{n}": v for n, v in x["nmi"].items()}
                row["adjacent_nmi"] = x["adjacent_nmi"]
                rows.append(row)
        return pd.DataFrame(rows).assign(model=self.model)

    def charts(self) -> dict[str, alt.Chart]:
        load = pd.DataFrame(
            [
                {"layer": x["layer"], "expert": e, "load": f}
                for x in self.layers
                for e, f in enumerate(x["load"])
            ]
        )
        charts = {
            "load": alt.Chart(load, width=260, height=160)
            .mark_rect()
            .encode(x="expert:O", y="layer:O", color=alt.Color("load:Q"), tooltip=["layer", "expert", "load"])
            .properties(title=f"{self.model}: expert load f_e (uniform {self.k / self.n_experts:.3f})")
        }
        nmi = pd.DataFrame(
            [
                {"of": which, "layer": x["layer"], "label": n, "nmi": v}
                for which, layers in (("trained", self.layers), ("baseline", self.baseline_layers))
                for x in layers
                for n, v in x["nmi"].items()
            ]
        )
        charts["nmi"] = (
            alt.Chart(nmi, width=260, height=160)
            .mark_line(point=True)
            .encode(
                x="layer:O",
                y=alt.Y("nmi:Q", title="NMI(expert; label)"),
                color="label:N",
                strokeDash="of:N",
                tooltip=["of", "layer", "label", "nmi"],
            )
            .properties(
                title="specialization by label" + (f" (dashed: {self.baseline})" if self.baseline else "")
            )
        )
        spec_rows = [
            {"layer": x["layer"], "expert": e, "domain": d, "spec": v}
            for x in self.layers
            for d, values in x["spec"].get("domain", {}).items()
            for e, v in enumerate(values)
        ]
        if spec_rows:
            charts["spec_domain"] = (
                alt.Chart(pd.DataFrame(spec_rows), width=160, height=120)
                .mark_rect()
                .encode(
                    x="expert:O",
                    y="layer:O",
                    color=alt.Color(
                        "spec:Q", scale=alt.Scale(domainMid=self.k / self.n_experts, scheme="redblue")
                    ),
                    column="domain:N",
                    tooltip=["layer", "expert", "domain", "spec"],
                )
                .properties(title=f"spec(e, domain); uniform = {self.k / self.n_experts:.3f}")
            )
        return charts


@dataclass(frozen=True, kw_only=True)
class ExpertsSettings(Settings):
    """What `run_experts` measures; the defaults come from `experts/defaults.py`."""

    labels: tuple[str, ...] = defaults.LABELS  # domain, token_class, position, token
    baseline: bool = False  # also measure a randomly initialised copy of the architecture, seeded with seed
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(self.labels))


def run_experts(
    handle: ModelHandle,
    windows: TokenWindows,
    settings: ExpertsSettings = ExpertsSettings(),
    *,
    progress: bool = True,
    workers: Workers | None = None,
) -> ExpertsResult:
    """Routing statistics of every MoE layer over `windows`; with `baseline`, also of a random-init copy.
    `workers`: fold them on Ray workers (`workbench.scale`), merged to the same numbers."""
    labels, batch_size, seed = list(settings.labels), settings.batch_size, settings.seed
    layers, _ = routing_summary(handle, windows, labels, batch_size, progress, workers)
    base_what, base_layers = None, []
    if settings.baseline:
        copy = randomly_initialised(handle, seed)
        full, _ = routing_summary(copy, windows, labels, batch_size, progress, workers, random_init_seed=seed)
        base_what = f"randomly initialised copy of the architecture (seed {seed})"
        base_layers = [{k: x[k] for k in SUMMARY_KEYS} for x in full]
    provenance = Provenance(
        model=handle.facts.to_dict(),
        data=windows.slice_info,
        definition=DEFINITION,
        settings={"labels": labels, "batch_size": batch_size, "baseline": base_what},
        seed=seed,
    )
    return ExpertsResult(
        model=handle.name,
        tokens=windows.n_tokens,
        n_experts=handle.facts.n_experts,
        k=handle.facts.experts_per_token,
        labels=labels,
        layers=layers,
        provenance=provenance,
        baseline=base_what,
        baseline_layers=base_layers,
    )
