"""The defaults of transcoder training and evaluation, stated once.

Torch-free, so that the `transcoder` and `bench` commands read their help text from here without importing
the core.
"""

from __future__ import annotations

TRAIN_TOKENS = 2_000_000  # training tokens (TrainConfig.tokens)
BATCH_TOKENS = 1024  # tokens per optimiser step (TrainConfig.batch_size)
DEAD_TOKENS = 500_000  # a feature is dead after this many tokens without firing (TrainConfig.dead_tokens)
RESAMPLE_EVERY = 500  # steps between re-initialisations of dead features (resample remedies)
CHECKPOINT_EVERY = 200  # optimiser steps between checkpoints (TrainConfig.checkpoint_every)
ARCH = "topk"  # topk keeps the K largest features per token; relu trains with an L1 penalty
K = 32  # topk: features kept per token
EVAL_TOKENS = 16384  # held-out tokens an evaluation reads
WIDTH_PER_D_MODEL = 32  # features per d_model dimension when no width is given
PAIRS_DTYPES = ("auto", "float32", "bfloat16")  # precisions of the forward that makes training pairs


def default_layer(n_layers: int) -> int:
    """The MLP layer a transcoder replaces when none is given: the middle one, n_layers // 2."""
    return n_layers // 2
