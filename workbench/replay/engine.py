"""The replay engine: run a batch once unedited, keep the residual stream at every layer boundary, then
replay any list of edits from the first layer it touches (docs/methods.md#edits-and-replay; never
recompute what is cached: docs/architecture.md#performance-principles).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from workbench.errors import WorkbenchError
from workbench.models import ModelHandle
from workbench.replay.caches import ReplayCache
from workbench.replay.edits import Edit
from workbench.replay.plan import Plan, compile_plan
from workbench.replay.stack import Stack, run_mlp


class ReplayAbandoned(Exception):
    """A replay stopped between layers because its caller no longer wants it (a newer widget state)."""


@dataclass
class Trace:
    """One forward: resid[l] is the residual entering layer l (resid[n] leaves the last block)."""

    resid: list[torch.Tensor]  # n_layers + 1 tensors [B, T, d]
    logits: torch.Tensor  # [B, T, V]


@dataclass
class Replayed:
    """The edited run of the engine's batch."""

    edits: list[Edit]
    first_layer: int
    trace: Trace  # residuals before first_layer are the cached unedited ones
    apply_seconds: float  # compiling the edits (gathering weights, masks); done once per edit list
    seconds: float  # recomputing layers >= first_layer and the logits


def run_layers(
    stack: Stack,
    x: torch.Tensor,
    start: int,
    plan: Plan | None,
    rope,
    cancelled: Callable[[], bool] | None = None,
) -> list[torch.Tensor]:
    """Blocks start..n-1 from residual x, under the plan's overrides; returns the residuals after each.

    `cancelled` is asked before each block; when it says yes, ReplayAbandoned is raised (live widgets).
    """
    layers = stack.layers if plan is None else plan.layers
    out = []
    for i in range(start, stack.n_layers):
        if cancelled is not None and cancelled():
            raise ReplayAbandoned(f"abandoned before layer {i}")
        layer = layers[i]
        attn = plan.attn[i] if plan is not None and i in plan.attn else layer.attn
        if attn is not None:
            x = x + attn(layer.ln1(x), rope)
        if plan is not None and i in plan.mlp:
            mlp = plan.mlp[i]
            if mlp is not None:
                x = x + mlp(layer.ln2(x))
        else:
            x = x + run_mlp(layer.mlp, layer.ln2(x))
        out.append(x)
    return out


class ReplayEngine:
    """Holds one batch [B, T] (no padding) with its unedited trace; `replay(edits)` recomputes from L."""

    def __init__(
        self,
        handle: ModelHandle,
        tokens: torch.Tensor,
        stack: Stack | None = None,
        cache: ReplayCache | None = None,
    ) -> None:
        self.handle = handle
        self.stack = stack if stack is not None else Stack.of(handle)
        self.tokens = tokens.to(handle.device)
        self.cache = ReplayCache() if cache is None else cache  # plans, pruning orders, transcoders
        self.stack.check_length(self.tokens.shape[1])
        self.base = self.forward()
        if not self.stack.verified:
            self._verify()
        self.base_logprobs = torch.log_softmax(self.base.logits.float(), dim=-1)
        # what every comparison with the unedited run needs, computed once (effects.py)
        self.base_probs = self.base_logprobs.exp()
        self.base_top1 = self.base_logprobs.argmax(-1)

    def _verify(self) -> None:
        """Once per stack: its unedited logits must match the model's own forward (first sequence)."""
        with torch.inference_mode():
            expected = self.handle.logits(self.tokens[:1]).float()
        got = self.base.logits[:1].float()
        scale = max(1.0, float(expected.abs().max()))
        tolerance = 1e-3 if got.dtype == torch.float32 and self.stack.embed.dtype == torch.float32 else 5e-2
        error = float((got - expected).abs().max()) / scale
        if error > tolerance:
            raise WorkbenchError(
                f"Replay's tensor copy of {self.handle.name} disagrees with the model (relative logit "
                f"error {error:.2e}); this architecture variant is not supported by replay. Use "
                "workbench.replay.edits_applied (hooks) instead."
            )
        self.stack.verified = True

    @functools.cached_property
    def full_forward_seconds(self) -> float:
        """One warm unedited forward to logits, timed on first use (the baseline replay is compared with)."""
        start = time.perf_counter()
        self.forward()
        return time.perf_counter() - start

    def forward(self, plan: Plan | None = None, tokens: torch.Tensor | None = None) -> Trace:
        """A full forward from the embeddings (under `plan` when given)."""
        tokens = self.tokens if tokens is None else tokens
        with torch.inference_mode():
            x = self.stack.embedding(tokens)
            resid = [x, *run_layers(self.stack, x, 0, plan, self.stack.rope(tokens.shape[1]))]
            return Trace(resid, self.stack.logits(resid[-1]))

    def compile(self, edits: list[Edit]) -> Plan:
        return compile_plan(self.handle, self.stack, list(edits), self.cache)

    def replay(self, edits: list[Edit] | Plan, cancelled: Callable[[], bool] | None = None) -> Replayed:
        """The batch under the edits, recomputing only layers >= the first edited one.

        `cancelled` (asked between layers) lets a caller abandon a replay whose inputs changed.
        """
        plan = edits if isinstance(edits, Plan) else self.compile(edits)
        start = time.perf_counter()
        with torch.inference_mode():
            first = min(plan.first_layer, self.stack.n_layers)  # no edits: nothing to recompute
            x = self.base.resid[first]
            rope = self.stack.rope(self.tokens.shape[1])
            after = run_layers(self.stack, x, first, plan, rope, cancelled)
            logits = self.stack.logits(after[-1]) if after else self.base.logits
        seconds = time.perf_counter() - start
        trace = Trace([*self.base.resid[: first + 1], *after], logits)
        return Replayed(
            [] if isinstance(edits, Plan) else list(edits), first, trace, plan.apply_seconds, seconds
        )

    def generate(self, plan: Plan | None, n_tokens: int, prompt: torch.Tensor | None = None) -> torch.Tensor:
        """Greedy continuation [B, n_tokens] of the prompt (default: the engine's batch) under the plan.

        Each step recomputes the whole sequence (no key/value cache): fine for short continuations.
        """
        tokens = self.tokens if prompt is None else prompt.to(self.tokens.device)
        self.stack.check_length(tokens.shape[1] + n_tokens)
        new = []
        for _ in range(n_tokens):
            logits = self.forward(plan, tokens).logits[:, -1]
            token = logits.argmax(-1, keepdim=True)
            new.append(token)
            tokens = torch.cat([tokens, token], dim=1)
        return torch.cat(new, dim=1) if new else tokens[:, :0]
