"""Activation density (docs/methods.md#activation-sparsity): how few MLP neurons fire per token.

A definition (`definitions.py`) says when neuron i is active for token t. Density ρ_l(t) = share of
layer l's neurons active for token t. Everything is folded in flight by `DensityReducer` (no store,
memory independent of the token count); densities are multiples of 1/d_mlp, so a (d_mlp + 1)-bin
histogram gives exact medians and quantiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from workbench.errors import WorkbenchError
from workbench.models import ModelHandle
from workbench.neurons import NeuronHooks, neuron_hooks, output_weights
from workbench.probes.sinks import Additive
from workbench.sparsity.defaults import DENSE_THRESHOLD, FIRING_BINS
from workbench.sparsity.definitions import Definition
from workbench.sparsity.thresholds import calibrate

if TYPE_CHECKING:
    from workbench.scale.cluster import Workers


@dataclass
class DensityReducer(Additive):
    """Folds per-token density (as an exact histogram), per-neuron firing counts and per-domain sums.

    Every statistic is a count (int64, or float64 sums of integer counts), so merging is exact."""

    additive = ("histogram", "firing", "domain_active", "domain_tokens", "tokens")

    hooks: list[NeuronHooks]
    definition: Definition
    d_mlp: int
    n_domains: int
    thresholds: dict[int, float] = field(default_factory=dict)
    w_norms: dict[int, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.hooks)
        self.histogram = torch.zeros(n, self.d_mlp + 1, dtype=torch.long)  # tokens with k active neurons
        self.firing = torch.zeros(n, self.d_mlp, dtype=torch.long)
        self.domain_active = torch.zeros(n, self.n_domains, dtype=torch.float64)
        self.domain_tokens = torch.zeros(self.n_domains, dtype=torch.long)
        self.tokens = 0

    def update(self, values: dict[str, torch.Tensor], meta: dict[str, torch.Tensor]) -> None:
        domain = meta["domain"].long()
        for j, h in enumerate(self.hooks):
            active = self.definition.active(
                values[h.post].float(),
                values.get(h.pre),
                self.thresholds.get(h.layer),
                self.w_norms.get(h.layer),
            )
            count = active.sum(-1)
            self.histogram[j] += torch.bincount(count, minlength=self.d_mlp + 1)
            self.firing[j] += active.sum(0)
            self.domain_active[j].index_add_(0, domain, count.double())
        self.domain_tokens += torch.bincount(domain, minlength=self.n_domains)
        self.tokens += len(domain)

    def layer_stats(self, dense_threshold: float = DENSE_THRESHOLD) -> list[dict]:
        """Per layer: mean, median and quantiles of per-token density; dead and dense neurons."""
        rows = []
        grid = torch.arange(self.d_mlp + 1, dtype=torch.float64) / self.d_mlp
        for j, h in enumerate(self.hooks):
            hist = self.histogram[j].double()
            cdf = hist.cumsum(0) / hist.sum()
            quantile = {
                q: grid[int(torch.searchsorted(cdf, torch.tensor(q, dtype=torch.float64)))].item()
                for q in (0.05, 0.25, 0.5, 0.75, 0.95)
            }
            freq = self.firing[j].double() / max(1, self.tokens)
            rows.append(
                {
                    "layer": h.layer,
                    "density_mean": (hist * grid).sum().item() / hist.sum().item(),
                    "density_median": quantile[0.5],
                    "density_q05": quantile[0.05],
                    "density_q25": quantile[0.25],
                    "density_q75": quantile[0.75],
                    "density_q95": quantile[0.95],
                    "dead_neurons": int((self.firing[j] == 0).sum()),
                    "dense_neurons": int((freq > dense_threshold).sum()),
                }
            )
        return rows


def measure(
    handle: ModelHandle,
    windows,
    definition: Definition,
    calibration,
    batch_size: int = 8,
    progress: bool = True,
    workers: Workers | None = None,
) -> DensityReducer:
    """Run `windows` through the model and fold the density statistics of every layer (with `workers`,
    on Ray workers, one range of windows each, merged; thresholds are calibrated here first)."""
    from workbench.probes.capture import ActivationProbe
    from workbench.scale.fold import fold

    hooks = neuron_hooks(handle)
    thresholds = (
        calibrate(definition, handle, hooks, calibration, batch_size) if calibration is not None else {}
    )
    if definition.needs_calibration and not thresholds:
        raise WorkbenchError(f"{definition.name} needs calibration windows.")
    names = [h.post for h in hooks] + ([h.pre for h in hooks] if definition.kind == "positive" else [])
    w_norms = (
        {h.layer: output_weights(handle, h.layer).float().norm(dim=-1) for h in hooks}
        if definition.kind == "cett"
        else {}
    )
    reducer = DensityReducer(hooks, definition, handle.facts.d_mlp, len(windows.domains), thresholds, w_norms)
    fold(
        handle,
        windows,
        [ActivationProbe(names)],
        [reducer],
        batch_size=batch_size,
        progress=progress,
        workers=workers,
    )
    return reducer


def firing_histogram(reducer: DensityReducer) -> dict[int, list[int]]:
    """Per layer, how many neurons fire on a share of tokens in each of FIRING_BINS bins."""
    out = {}
    for j, h in enumerate(reducer.hooks):
        freq = reducer.firing[j].double() / max(1, reducer.tokens)
        bins = (freq * FIRING_BINS).long().clamp(0, FIRING_BINS - 1)
        out[h.layer] = torch.bincount(bins, minlength=FIRING_BINS).tolist()
    return out


def mean_over_layers(rows: list[dict]) -> float:
    return math.fsum(r["density_mean"] for r in rows) / len(rows)
