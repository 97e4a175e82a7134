"""Essential sparsity (docs/methods.md#essential-sparsity): one-shot pruning sweeps, no retraining.

    from workbench.essential import EssentialSettings, sweep
    result = sweep(handle, windows, EssentialSettings(criterion="wanda", levels=(0.0, 0.3, 0.6)))

Modules: `pruning` (the pruning plan: scope, scores, orderings, masks; the replay core uses it too),
`wanda` (Wanda's input norms and their calibration windows), `result` (EssentialResult, the knee and the
note), `run` (EssentialSettings and `sweep`), `defaults` (torch-free, for the help text).

The names below are imported on first use (PEP 562): importing `workbench.essential.pruning` or
`workbench.essential.defaults` does not import the sweep, and `workbench --help` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workbench.essential.pruning import PrunableMatrix, PruningPlan, prunable_matrices, pruned, scores
    from workbench.essential.result import EssentialResult, explain, knee
    from workbench.essential.run import EssentialSettings, sweep
    from workbench.essential.wanda import wanda_calibration, wanda_norms

_MODULE_OF = {
    "PrunableMatrix": "pruning",
    "PruningPlan": "pruning",
    "prunable_matrices": "pruning",
    "pruned": "pruning",
    "scores": "pruning",
    "EssentialResult": "result",
    "explain": "result",
    "knee": "result",
    "EssentialSettings": "run",
    "sweep": "run",
    "wanda_calibration": "wanda",
    "wanda_norms": "wanda",
}

__all__ = [
    "EssentialResult",
    "EssentialSettings",
    "PrunableMatrix",
    "PruningPlan",
    "explain",
    "knee",
    "prunable_matrices",
    "pruned",
    "scores",
    "sweep",
    "wanda_calibration",
    "wanda_norms",
]


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
