"""The defaults of `workbench.sparsity.run.run_sparsity`, stated once.

Torch-free, so that the `sparsity` command reads its help text from here without importing the core.
"""

from __future__ import annotations

INPUT_KINDS = ("heldout", "train", "random")  # the text, the calibration source, uniformly random token ids
INPUTS = ("heldout",)
CALIBRATION_TOKENS = 2048  # calibration tokens for the thresholds of magnitude@P and cett@R
DENSE_THRESHOLD = 0.5  # a neuron firing on more than this share of tokens counts as dense
FIRING_BINS = 20  # histogram of per-neuron firing frequency: [0, 0.05), ..., [0.95, 1]
