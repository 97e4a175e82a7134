"""Per-layer thresholds of `magnitude@p` and `cett@r`, fitted on calibration tokens, never the measured ones.

The calibration windows come from `workbench.calibration` (the train split of the corpus in use, or
`--calibration`), drawn with seed + 1 (`sparsity_calibration`), so that they differ from the `train`
input kind's windows (drawn with the seed itself).
"""

from __future__ import annotations

import torch

from workbench.models import ModelHandle
from workbench.neurons import NeuronHooks, output_weights
from workbench.sparsity.definitions import Definition


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


def sparsity_calibration(handle: ModelHandle, source, context: int, n_tokens: int, seed: int):
    """The threshold-fitting windows: `n_tokens` of `source` (a CalibrationSource) in whole `context`
    windows, chosen with seed + 1 (the `train` input kind uses the seed itself)."""
    from workbench.calibration import calibration_windows

    return calibration_windows(handle, source, context, n_tokens, seed=seed + 1)
