"""The defaults of the essential-sparsity sweep (`workbench.essential.run.EssentialSettings`), stated once.

Torch-free, so that the `essential` command reads its help text from here without importing the core.
"""

from __future__ import annotations

CRITERIA = ("magnitude", "random", "wanda")  # what is pruned first (workbench.essential.pruning.scores)
LEVELS = tuple(round(0.1 * i, 1) for i in range(10))  # 0, 0.1, ..., 0.9
CRITERION = "magnitude"
PATTERN = "global"  # one ranking over every prunable matrix
WANDA_PATTERN = "rowwise"  # Wanda compares weights within each output row (Sun et al., 2023)
TOLERANCE = 0.01
REFINE = 3
CALIBRATION_TOKENS = 2048  # train-split tokens for Wanda's input norms


def default_pattern(criterion: str) -> str:
    """The pattern a sweep uses when none is given: rowwise for Wanda, global otherwise."""
    return WANDA_PATTERN if criterion == "wanda" else PATTERN
