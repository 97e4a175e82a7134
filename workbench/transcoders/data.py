"""Where training pairs (x = MLP input, y = MLP output) come from: a paired store, or the model itself.

`model_pairs` runs the model's Hugging Face modules over token windows up to the layer's MLP
(`direct.py`), and mixes tokens through a shuffle buffer, so consecutive batches are not
consecutive text. `store_pairs` reads a capture store's two fields row-aligned, shuffled. Both loop
over their data for as many passes as training asks, and report which window comes next so that a
resumed run continues where the checkpoint was taken.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from workbench.corpus import TokenWindows
from workbench.errors import WorkbenchError
from workbench.models import ModelHandle


def mlp_hooks(layer: int) -> tuple[str, str]:
    """The transcoder's input and target: the MLP's input and its output (before the residual add)."""
    return f"blocks.{layer}.mlp.hook_in", f"blocks.{layer}.mlp.hook_out"


@dataclass
class Batch:
    x: torch.Tensor  # [b, d_in]
    y: torch.Tensor  # [b, d_out]
    cursor: int  # windows (model) or batches (store) consumed so far, for resuming


@torch.inference_mode()
def mlp_pairs_of(handle: ModelHandle, layer: int, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of every token of `tokens` [b, pos], flattened; the forward stops after the MLP."""
    from workbench.probes.base import ForwardDone
    from workbench.probes.capture import ActivationProbe, attached

    probe = ActivationProbe(list(mlp_hooks(layer)))
    probe.fields(handle, tokens.shape[1])
    with attached(handle, [probe], stop_when_done=True), contextlib.suppress(ForwardDone):
        handle.logits(tokens)
    values = probe.take(*tokens.shape)
    hook_in, hook_out = mlp_hooks(layer)
    return values[hook_in].float(), values[hook_out].float()


def model_pairs(
    handle: ModelHandle,
    windows: TokenWindows,
    layer: int,
    batch_size: int,
    buffer_tokens: int = 65536,
    windows_per_forward: int = 8,
    seed: int = 0,
    start: int = 0,
    cache: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Iterator[Batch]:
    """Endless shuffled (x, y) batches from the model; window order is fixed by the windows object.

    The pairs come from the plain Hugging Face modules, truncated after the layer (`DirectPairs`), the
    same numbers as the bridge's hooks at less cost (with `dtype` float32; bfloat16 runs the forward's
    matmuls in bfloat16, see direct.py). With `cache` (for runs of more than one pass), every
    window's pairs are kept after the first pass and reused, when they fit (`pair_cache`).
    """
    from workbench.transcoders.direct import DirectPairs

    pairs_of = DirectPairs(handle, layer, dtype)
    generator = torch.Generator().manual_seed(seed + start)
    n = windows.tokens.shape[0]
    kept = pair_cache(windows, handle.facts.d_model) if cache else None
    cursor = start
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    held = 0
    while True:
        while held < buffer_tokens:
            rows = torch.arange(cursor, cursor + windows_per_forward) % n
            if kept is not None and kept.filled[rows].all():
                x, y = kept.x[rows].flatten(0, 1), kept.y[rows].flatten(0, 1)
            else:
                x, y = pairs_of(windows.tokens[rows])
                if kept is not None:
                    kept.x[rows] = x.view(len(rows), -1, x.shape[-1])
                    kept.y[rows] = y.view(len(rows), -1, y.shape[-1])
                    kept.filled[rows] = True
            xs.append(x)
            ys.append(y)
            held += len(x)
            cursor += windows_per_forward
        x, y = torch.cat(xs), torch.cat(ys)
        order = torch.randperm(len(x), generator=generator)
        x, y = x[order], y[order]
        half = len(x) // 2  # emit half the buffer, keep the other half to mix with fresh tokens
        for lo in range(0, half - batch_size + 1, batch_size):
            yield Batch(x[lo : lo + batch_size], y[lo : lo + batch_size], cursor)
        used = (half // batch_size) * batch_size
        xs, ys, held = [x[used:]], [y[used:]], len(x) - used


CACHE_BYTES = 4 * 2**30  # at most this much memory (and a quarter of what is free) for cached pairs


@dataclass
class PairCache:
    x: torch.Tensor  # [windows, context, d_model]
    y: torch.Tensor
    filled: torch.Tensor  # [windows] bool: which windows hold their pairs


def pair_cache(windows: TokenWindows, d_model: int) -> PairCache | None:
    """Room for every window's (x, y) in float32, or None when that needs more than CACHE_BYTES or a
    quarter of the free memory (the pairs are then recomputed each pass)."""
    import psutil

    n, context = windows.tokens.shape
    need = 2 * n * context * d_model * 4
    if need > min(CACHE_BYTES, psutil.virtual_memory().available // 4):
        return None
    empty = lambda: torch.empty(n, context, d_model)  # noqa: E731
    return PairCache(empty(), empty(), torch.zeros(n, dtype=torch.bool))


def store_pairs(path, hook_in: str, hook_out: str, batch_size: int, seed: int = 0, start: int = 0):
    """Endless shuffled (x, y) batches from a paired activation store (a new shuffle each pass)."""
    from workbench.store import StoreReader

    reader = StoreReader(path)
    missing = [h for h in (hook_in, hook_out) if h not in reader.fields]
    if missing:
        raise WorkbenchError(
            f"The store {path} lacks {missing}. Capture both with: workbench capture --hooks {hook_in} "
            f"--hooks {hook_out} --out DIR"
        )
    consumed, epoch = 0, 0
    while True:
        for batch in reader.iter_batches([hook_in, hook_out], batch_size, shuffle=True, seed=seed + epoch):
            consumed += 1
            if consumed <= start or len(batch[hook_in]) < batch_size:
                continue
            yield Batch(batch[hook_in].float(), batch[hook_out].float(), consumed)
        epoch += 1
