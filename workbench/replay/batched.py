"""Long replays: the same edits over many windows, a batch at a time, merged into one result.

Memory does not grow with the number of windows: each batch is replayed on its own session, and every
session after the first reuses the first one's engine (its compiled plans and caches).
"""

from __future__ import annotations

import time

import torch

from workbench.corpus import TokenWindows
from workbench.models import ModelHandle
from workbench.progress import Bar
from workbench.replay.defaults import PROMPT_TOKENS
from workbench.replay.edits import Edit
from workbench.replay.session import ReplayResult, ReplaySession, merged


def replay_in_batches(
    handle: ModelHandle,
    windows: TokenWindows,
    edits: list[Edit],
    batch_size: int = 8,
    logit_tokens: list[int] | None = None,
    backend: str | None = None,
    generate: int | None = None,
    prompt: str | None = None,
    prompt_tokens: int = PROMPT_TOKENS,
    progress: bool = True,
) -> ReplayResult:
    """The effect of `edits` on `windows`, replayed `batch_size` windows at a time (means by token count).

    `logit_tokens`: token ids whose mean logit change is also reported. With `generate` N, the result's
    `generation` also holds a greedy continuation of N tokens, unedited and edited, of `prompt` (text) or
    of the first window's first `prompt_tokens` tokens, and the seconds it took.
    """
    results, first = [], None
    bar = Bar(windows.n_tokens, unit="tokens", desc="replay", show=progress)
    for batch in windows.tokens.split(batch_size):
        session = ReplaySession(handle, batch, windows.slice_info, engine_of=first, backend=backend)
        first = first or session
        results.append(session.apply(edits, logit_tokens))
        bar.update(batch.numel())
    bar.close()
    result = merged(results)
    if generate:
        ids = (
            torch.tensor([handle.tokenizer(prompt, add_special_tokens=False)["input_ids"]])
            if prompt
            else windows.tokens[:1, :prompt_tokens]
        )
        start = time.perf_counter()
        result.generation = ReplaySession(handle, ids, engine_of=first).generate(edits, generate)
        result.generation["seconds"] = round(time.perf_counter() - start, 4)
    return result
