"""What a transcoder learns from: every domain of the training text from the first batch on."""

from __future__ import annotations

import torch

from workbench.transcoders.data import model_pairs
from workbench.transcoders.run import tokens_note, training_windows


def test_a_short_transcoder_run_sees_every_domain_in_proportion(gpt2_handle):
    # --corpus NAME trains on NAME's train split, in which every prose document comes before any code
    windows = training_windows(gpt2_handle, corpus="pydocs", context=32, seed=0)
    assert (windows.slice_info["corpus"], windows.slice_info["split"]) == ("pydocs", "train")
    assert windows.n_windows == windows.slice_info["windows_available"]  # every window, each once
    shares = torch.bincount(windows.domain.flatten().long(), minlength=2).double() / windows.n_tokens
    assert shares.min() > 0.4
    batches = model_pairs(gpt2_handle, windows, 0, batch_size=256, buffer_tokens=256 * 32, seed=0)
    first = next(batches)  # emitted once the shuffle buffer holds the first `cursor` windows
    assert first.cursor == 256 and first.x.shape == (256, gpt2_handle.facts.d_model)
    seen = windows.domain[: first.cursor].flatten().long()
    prefix = torch.bincount(seen, minlength=2).double() / seen.numel()
    assert (prefix - shares).abs().max() < 0.1, (prefix, shares)


def test_tokens_note_says_how_many_and_why():
    assert tokens_note(4096, 1024) is None
    assert tokens_note(1000, 256) == (
        "trained 768 tokens in 3 steps, not 1000: 1000 is not a whole number of optimiser steps of 256 "
        "tokens (--batch-tokens); the last 232 were dropped"
    )
    assert tokens_note(100, 256) == (
        "trained 256 tokens in 1 step, not 100: 100 is less than one optimiser step of 256 tokens "
        "(--batch-tokens)"
    )
