"""Wanda's activation norms (docs/methods.md#scores-and-patterns): ‖X_j‖₂ of every prunable matrix's input
features over calibration tokens, and the calibration windows they are taken on.

The windows come from `workbench.calibration` (the train split of the evaluated corpus, or a given
source), drawn with seed + 1, so that they never coincide with the evaluated windows' selection.
"""

from __future__ import annotations

import torch

from workbench.errors import WorkbenchError
from workbench.probes.sinks import Additive

INPUT_HOOKS = {  # where each matrix kind reads its input, for Wanda's ‖X_j‖
    "attn_q": "ln1.hook_out",
    "attn_k": "ln1.hook_out",
    "attn_v": "ln1.hook_out",
    "attn_qkv": "ln1.hook_out",
    "attn_o": "attn.o.hook_in",
    "mlp_in": "ln2.hook_out",
    "mlp_gate": "ln2.hook_out",
    "mlp_out": "mlp.out.hook_in",
}


class SquareSumReducer(Additive):
    """Σ_t x_t² per input feature of each hook (for ‖X_j‖₂ over calibration tokens)."""

    additive = ("sums",)

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}

    def update(self, values: dict[str, torch.Tensor], meta: dict[str, torch.Tensor]) -> None:
        for name, value in values.items():
            flat = value.double().reshape(value.shape[0], -1)
            self.sums[name] = self.sums.get(name, 0) + (flat**2).sum(0)


def wanda_norms(handle, matrices, calibration, batch_size: int = 8) -> dict[str, torch.Tensor]:
    """‖X_j‖₂ over calibration tokens for every matrix's input features (Wanda's activation norms)."""
    from workbench.probes.capture import ActivationProbe, ReducerSink, capture

    if any("[" in m.name for m in matrices):
        raise WorkbenchError("Wanda scores for MoE experts need per-expert routed inputs; not supported yet.")
    hooks = {m.name: f"blocks.{m.layer}.{INPUT_HOOKS[m.kind]}" for m in matrices}
    reducer = SquareSumReducer()
    capture(
        handle,
        calibration,
        [ActivationProbe(sorted(set(hooks.values())))],
        ReducerSink([reducer]),
        batch_size=batch_size,
        progress=False,
    )
    norms = {}
    for m in matrices:
        norm = reducer.sums[hooks[m.name]].sqrt().float()
        if norm.numel() != m.shape[m.in_dim]:
            raise WorkbenchError(
                f"{hooks[m.name]} has {norm.numel()} features; {m.name} reads {m.shape[m.in_dim]}."
            )
        norms[m.name] = norm
    return norms


def wanda_calibration(handle, windows, calibration, n_tokens: int, seed: int):
    """Wanda's calibration windows: given windows as they are; else `n_tokens` of a `CalibrationSource`
    (by default the train split of `windows`' corpus) in windows of `windows`' length, chosen with
    seed + 1."""
    from workbench.calibration import CalibrationSource, calibration_source, calibration_windows

    if calibration is not None and not isinstance(calibration, CalibrationSource):
        return calibration
    corpus = windows.slice_info.get("corpus")
    source = calibration or calibration_source(corpus, purpose="wanda's input norms")
    return calibration_windows(handle, source, windows.context, n_tokens, seed=seed + 1)
