"""Lazy-neuron activation sparsity (docs/methods.md#activation-sparsity): how few MLP neurons fire per token.

A definition says when neuron i is active for token t (`exact_zero`, `positive`, `magnitude@p`,
`cett@r`, `topk@k`). Density ρ_l(t) = share of layer l's neurons active for token t. Everything is
folded in flight by `DensityReducer` (no store, memory independent of the token count); densities
are multiples of 1/d_mlp, so a (d_mlp + 1)-bin histogram gives exact medians and quantiles.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch

from workbench.errors import WorkbenchError
from workbench.models import ModelHandle
from workbench.neurons import NeuronHooks, neuron_hooks, output_weights

FIRING_BINS = 20  # histogram of per-neuron firing frequency: [0, 0.05), ..., [0.95, 1]
_SPEC = re.compile(r"^(exact_zero|positive|magnitude@(0?\.\d+|1\.0|0|1)|cett@(0?\.\d+|0|1)|topk@(\d+))$")


@dataclass(frozen=True)
class Definition:
    """When a neuron counts as active; `param` is p, r or k after the @."""

    name: str
    kind: str
    param: float | None = None

    @classmethod
    def parse(cls, text: str) -> Definition:
        if not _SPEC.match(text):
            raise WorkbenchError(
                f"Unknown sparsity definition {text!r}. Use exact_zero, positive, magnitude@P (0<P<1), "
                "cett@R (0<R<1) or topk@K (docs/methods.md#activity-definitions)."
            )
        kind, _, param = text.partition("@")
        return cls(text, kind, float(param) if param else None)

    @property
    def needs_calibration(self) -> bool:
        return self.kind in ("magnitude", "cett")

    def describe(self, gated: bool) -> str:
        neuron = "a = SiLU(W_gate h) ⊙ (W_up h), the product meeting W_out" if gated else "a = σ(W_in h + b)"
        rule = {
            "exact_zero": "active iff a != 0",
            "positive": "active iff the pre-activation > 0" + (" (the gate's sign alone)" if gated else ""),
            "magnitude": f"active iff |a| > t_l, t_l = the {self.param}-quantile of |a| on "
            "calibration tokens",
            "cett": "active iff |a_i|·‖W_out[i]‖ >= ε_l, ε_l the largest with mean "
            f"‖Σ_inactive a_i W_out[i]‖ / ‖Σ_i a_i W_out[i]‖ <= {self.param} on calibration tokens",
            "topk": f"active iff among the {int(self.param or 0)} largest |a| of the token",
        }[self.kind]
        return f"{self.name}: {rule}; {neuron}; density = active neurons / d_mlp per token"

    def active(
        self, a: torch.Tensor, pre: torch.Tensor | None, threshold: float | None, w_norm: torch.Tensor | None
    ) -> torch.Tensor:
        """Boolean [tokens, d_mlp]: which neurons are active."""
        if self.kind == "exact_zero":
            return a != 0
        if self.kind == "positive":
            return pre > 0
        if self.kind == "magnitude":
            return a.abs() > threshold
        if self.kind == "cett":
            return a.abs() * w_norm >= threshold
        k = min(int(self.param), a.shape[-1])
        return torch.zeros_like(a, dtype=torch.bool).scatter_(-1, a.abs().topk(k, dim=-1).indices, True)


def cett_ratio(a: torch.Tensor, w_out: torch.Tensor, eps: float) -> float:
    """Mean over tokens of ‖Σ_{i inactive} a_i W_out[i]‖ / ‖Σ_i a_i W_out[i]‖ at threshold ε."""
    inactive = a.abs() * w_out.norm(dim=-1) < eps
    full = (a @ w_out).norm(dim=-1)
    part = ((a * inactive) @ w_out).norm(dim=-1)
    return (part / full.clamp_min(1e-12)).mean().item()


def cett_threshold(a: torch.Tensor, w_out: torch.Tensor, r: float, steps: int = 40) -> float:
    """The largest ε with cett_ratio(ε) <= r, by bisection between 0 and the largest contribution."""
    low, high = 0.0, (a.abs() * w_out.norm(dim=-1)).max().item() * (1 + 1e-6)
    if cett_ratio(a, w_out, high) <= r:
        return high
    for _ in range(steps):
        mid = (low + high) / 2
        low, high = (mid, high) if cett_ratio(a, w_out, mid) <= r else (low, mid)
    return low


def calibrate(
    definition: Definition, handle: ModelHandle, hooks: list[NeuronHooks], windows, batch_size: int
) -> dict[int, float]:
    """Per-layer thresholds of `magnitude@p` or `cett@r` from calibration windows (kept in memory)."""
    from workbench.probes.capture import ActivationProbe, MemorySink, capture

    if not definition.needs_calibration:
        return {}
    sink = capture(
        handle,
        windows,
        [ActivationProbe([h.post for h in hooks])],
        MemorySink(),
        batch_size=batch_size,
        progress=False,
    )
    thresholds = {}
    for h in hooks:
        a = sink.values[h.post].float()
        if definition.kind == "magnitude":
            flat = a.abs().flatten()
            if flat.numel() > 2**24:  # torch.quantile's limit: a seeded random subsample
                flat = flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))[: 2**24]]
            thresholds[h.layer] = torch.quantile(flat, definition.param).item()
        else:
            thresholds[h.layer] = cett_threshold(a, output_weights(handle, h.layer).float(), definition.param)
    return thresholds


@dataclass
class DensityReducer:
    """Folds per-token density (as an exact histogram), per-neuron firing counts and per-domain sums."""

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

    def layer_stats(self, dense_threshold: float = 0.5) -> list[dict]:
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
) -> DensityReducer:
    """Run `windows` through the model and fold the density statistics of every layer."""
    from workbench.probes.capture import ActivationProbe, ReducerSink, capture

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
    capture(
        handle,
        windows,
        [ActivationProbe(names)],
        ReducerSink([reducer]),
        batch_size=batch_size,
        progress=progress,
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
