"""Live Jupyter widgets on the replay engine: edit a model and see the effect as a control moves.

    from workbench.widgets import EditExplorer
    EditExplorer(handle, "The capital of France is")

Scripts and styles ship in the package (workbench/widgets/static); charts are drawn to SVG offline.
The names below are imported on first use (PEP 562): importing the package does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workbench.widgets.attention_viewer import AttentionViewer
    from workbench.widgets.edit_explorer import EditExplorer
    from workbench.widgets.expert_explorer import ExpertExplorer
    from workbench.widgets.feature_explorer import FeatureExplorer
    from workbench.widgets.sparsity_explorer import SparsityExplorer

_MODULE_OF = {
    "AttentionViewer": "attention_viewer",
    "EditExplorer": "edit_explorer",
    "ExpertExplorer": "expert_explorer",
    "FeatureExplorer": "feature_explorer",
    "SparsityExplorer": "sparsity_explorer",
}

__all__ = ["AttentionViewer", "EditExplorer", "ExpertExplorer", "FeatureExplorer", "SparsityExplorer"]


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'workbench.widgets' has no attribute {name!r}")
    return getattr(importlib.import_module(f"workbench.widgets.{_MODULE_OF[name]}"), name)
