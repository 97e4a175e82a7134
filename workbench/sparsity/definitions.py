"""When a neuron counts as active (docs/methods.md#activity-definitions), and the default per model.

A definition is parsed from its name: `exact_zero`, `positive`, `magnitude@p`, `cett@r` or `topk@k`.
`magnitude` and `cett` need per-layer thresholds fitted on calibration tokens (`thresholds.calibrate`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from workbench.errors import WorkbenchError

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


def default_definition(handle) -> str:
    """exact_zero for ReLU models (exact); the gate's sign (`positive`) for everything else."""
    return "exact_zero" if handle.facts.act_fn == "relu" else "positive"
