"""Lazy-neuron activation sparsity (docs/methods.md#activation-sparsity): how few MLP neurons fire per token.

    from workbench.sparsity import SparsitySettings, run_sparsity
    result = run_sparsity(handle, windows, SparsitySettings(inputs=("heldout", "random")))

Modules: `definitions` (when a neuron counts as active), `thresholds` (calibrated thresholds of
magnitude@P and cett@R), `density` (the in-flight fold and its statistics), `result` (SparsityResult),
`run` (SparsitySettings, the input kinds and `run_sparsity`), `defaults` (torch-free, for the help text).

The names below are imported on first use (PEP 562), so that `workbench --help`, which reads
`workbench.sparsity.defaults`, does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workbench.sparsity.defaults import FIRING_BINS, INPUT_KINDS
    from workbench.sparsity.definitions import Definition, default_definition
    from workbench.sparsity.density import DensityReducer, firing_histogram, mean_over_layers, measure
    from workbench.sparsity.result import SparsityResult
    from workbench.sparsity.run import SparsitySettings, run_sparsity, sparsity_inputs, sparsity_source
    from workbench.sparsity.thresholds import calibrate, cett_ratio, cett_threshold, sparsity_calibration

_MODULE_OF = {
    "FIRING_BINS": "defaults",
    "INPUT_KINDS": "defaults",
    "Definition": "definitions",
    "default_definition": "definitions",
    "DensityReducer": "density",
    "firing_histogram": "density",
    "mean_over_layers": "density",
    "measure": "density",
    "SparsityResult": "result",
    "SparsitySettings": "run",
    "run_sparsity": "run",
    "sparsity_inputs": "run",
    "sparsity_source": "run",
    "calibrate": "thresholds",
    "cett_ratio": "thresholds",
    "cett_threshold": "thresholds",
    "sparsity_calibration": "thresholds",
}

__all__ = [
    "Definition",
    "DensityReducer",
    "FIRING_BINS",
    "INPUT_KINDS",
    "SparsityResult",
    "SparsitySettings",
    "calibrate",
    "cett_ratio",
    "cett_threshold",
    "default_definition",
    "firing_histogram",
    "mean_over_layers",
    "measure",
    "run_sparsity",
    "sparsity_calibration",
    "sparsity_inputs",
    "sparsity_source",
]


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
