"""What the sparsity explorer measures: token windows of a text, a session or as given; the activations
it captures once and folds again on every control move; and per-layer thresholds from them."""

from __future__ import annotations

from typing import Any

import torch

from workbench.corpus import TokenWindows, check_context
from workbench.errors import WorkbenchError
from workbench.models import ModelHandle
from workbench.neurons import NeuronHooks, output_weights
from workbench.probes.sinks import Additive
from workbench.replay.session import ReplaySession
from workbench.sparsity.definitions import Definition
from workbench.sparsity.thresholds import cett_threshold

CHUNK_TOKENS = 4096  # cached tokens folded per reducer update (bounds the temporaries)


def text_windows(handle: ModelHandle, text: str) -> TokenWindows:
    """One window holding the text's tokens (no BOS, no separator), of domain "text"."""
    ids = handle.tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise WorkbenchError("The text holds no tokens; give some text.")
    if len(ids) > handle.facts.n_ctx:
        raise WorkbenchError(
            f"The text holds {len(ids)} tokens, more than {handle.name}'s {handle.facts.n_ctx} positions; "
            "give a shorter text, or token windows (workbench.corpus.windows_for)."
        )
    n = len(ids)
    return TokenWindows(
        torch.tensor([ids], dtype=torch.long),
        torch.zeros(1, n, dtype=torch.int32),
        torch.zeros(1, n, dtype=torch.int16),
        torch.arange(n, dtype=torch.int32)[None],
        ["text"],
        ["text"],
        {"text": text, "tokens": n},
    )


def windows_of(handle: ModelHandle, source: Any) -> TokenWindows:
    """Token windows of a text, of a replay session's batch, or as given."""
    if isinstance(source, TokenWindows):
        check_context(handle, source.context)
        return source
    if isinstance(source, ReplaySession):
        tokens = source.engine.tokens.cpu()
        b, n = tokens.shape
        return TokenWindows(
            tokens,
            torch.zeros(b, n, dtype=torch.int32),
            torch.zeros(b, n, dtype=torch.int16),
            torch.arange(n, dtype=torch.int32).expand(b, n).contiguous(),
            ["session"],
            ["text"],
            dict(source.data),
        )
    if isinstance(source, str):
        return text_windows(handle, source)
    raise WorkbenchError(
        f"Give a text, token windows or a ReplaySession to measure, not {type(source).__name__}."
    )


class ActivationCache(Additive):
    """A capture reducer that keeps, for every token and layer, the neuron activations a (float32) and
    whether the pre-activation is > 0 (all the definitions read), plus each token's domain (merging
    appends another cache's tokens after these)."""

    additive = ("_post", "_pre", "_domain")

    def __init__(self, hooks: list[NeuronHooks]) -> None:
        self.hooks = hooks
        self._post: dict[int, list[torch.Tensor]] = {h.layer: [] for h in hooks}
        self._pre: dict[int, list[torch.Tensor]] = {h.layer: [] for h in hooks}
        self._domain: list[torch.Tensor] = []

    def update(self, values: dict[str, torch.Tensor], meta: dict[str, torch.Tensor]) -> None:
        for h in self.hooks:
            self._post[h.layer].append(values[h.post].float())
            self._pre[h.layer].append(values[h.pre] > 0)
        self._domain.append(meta["domain"])

    def finish(self) -> None:
        self.post = {layer: torch.cat(v) for layer, v in self._post.items()}
        self.pre_positive = {layer: torch.cat(v) for layer, v in self._pre.items()}
        self.domain = torch.cat(self._domain)
        self._post, self._pre, self._domain = {}, {}, []

    @property
    def tokens(self) -> int:
        return len(self.domain)

    def chunks(self, size: int = CHUNK_TOKENS):
        """(values, meta) as `capture` hands them to a reducer, `size` tokens at a time."""
        for lo in range(0, self.tokens, size):
            part = slice(lo, lo + size)
            values = {h.post: self.post[h.layer][part] for h in self.hooks}
            values |= {h.pre: self.pre_positive[h.layer][part] for h in self.hooks}
            yield values, {"domain": self.domain[part]}


def thresholds_of(
    spec: Definition, handle: ModelHandle, hooks: list[NeuronHooks], values: dict[int, torch.Tensor]
) -> dict[int, float]:
    """Per-layer thresholds of `magnitude@p` or `cett@r` from calibration activations already captured:
    the computation of `workbench.sparsity.thresholds.calibrate` after its capture, step for step (the
    tests check that both agree)."""
    out = {}
    for h in hooks:
        a = values[h.layer]
        if spec.kind == "magnitude":  # a: the layer's magnitudes(), or any order of them
            out[h.layer] = torch.quantile(a if a.ndim == 1 else magnitudes(a), spec.param).item()
        else:
            w_out = output_weights(handle, h.layer).float().cpu()  # beside the captured (CPU) values
            out[h.layer] = cett_threshold(a, w_out, spec.param)
    return out


def magnitudes(a: torch.Tensor) -> torch.Tensor:
    """The |a| values `calibrate` takes the quantile of: all of them, or its seeded random subsample of
    2²⁴ when there are more (torch.quantile's limit)."""
    flat = a.abs().flatten()
    if flat.numel() > 2**24:
        flat = flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))[: 2**24]]
    return flat
