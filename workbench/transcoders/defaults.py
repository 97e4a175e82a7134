"""The defaults of transcoder training and evaluation, stated once.

Torch-free, so that the `transcoder` and `bench` commands read their help text from here without importing
the core.
"""

from __future__ import annotations

TRAIN_TOKENS = 2_000_000  # training tokens (TrainConfig.tokens)
EVAL_TOKENS = 16384  # held-out tokens an evaluation reads
WIDTH_PER_D_MODEL = 32  # features per d_model dimension when no width is given


def default_layer(n_layers: int) -> int:
    """The MLP layer a transcoder replaces when none is given: the middle one, n_layers // 2."""
    return n_layers // 2
