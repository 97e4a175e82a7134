"""The Python API the widgets build on: a prompt or batch with its cached baseline.

    session = ReplaySession.from_text(handle, "The capital of France is")
    result = session.apply([{"kind": "skip", "layer": 3, "target": "mlp"}])   # cheap to repeat
    session.generate(edits, 10)                                               # beside the unedited text

Compiled edit lists are kept (a few, least recently used first out), so moving a slider back and forth
pays the weight gathering once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import altair as alt
import pandas as pd
import torch

from workbench.errors import WorkbenchError
from workbench.models import ModelHandle
from workbench.replay.caches import PlanKey
from workbench.replay.edits import Edit, parse_edits
from workbench.replay.effects import effects
from workbench.replay.engine import ReplayEngine
from workbench.replay.plan import Plan
from workbench.replay.stack import Stack
from workbench.results import Provenance, Result, register_result

DEFINITION = (
    "Replay: the unedited run is cached (residual stream at every layer boundary); an edit "
    "list recomputes layers >= its first layer. ce = mean next-token cross-entropy (nats) over the batch; "
    "kl = mean over positions of KL(base ‖ edited) of the next-token distribution; top1_agreement = share "
    "of positions whose argmax token is unchanged; resid_deviation[l] = mean over tokens of "
    "‖r_edited − r_base‖ / ‖r_base‖ for the residual entering layer l (l = n_layers: after the last block). "
    "See docs/methods.md#effects-of-an-edit."
)


@register_result
@dataclass(kw_only=True)
class ReplayResult(Result):
    kind = "replay"
    title = "Edit replay: effect on the model's outputs"

    model: str
    edits: list[dict]
    first_layer: int
    tokens: int
    ce_base: float
    ce_edited: float
    ce_delta: float
    kl: float
    top1_agreement: float
    resid_deviation: list[float]
    per_token: list[dict]  # {"position", "token", "ce_delta", "kl"} for the first sequence
    seconds: float
    apply_seconds: float
    full_forward_seconds: float
    provenance: Provenance
    logit_diff: list[float] | None = None
    generation: dict | None = None

    def table(self) -> pd.DataFrame:
        keys = ("ce_base", "ce_edited", "ce_delta", "kl", "top1_agreement", "seconds", "apply_seconds")
        return pd.DataFrame(
            [{"model": self.model, "first_layer": self.first_layer} | {k: getattr(self, k) for k in keys}]
        )

    def charts(self) -> dict[str, alt.Chart]:
        deviation = pd.DataFrame(
            {"layer": range(len(self.resid_deviation)), "deviation": self.resid_deviation}
        )
        tokens = pd.DataFrame(self.per_token)
        return {
            "resid_deviation": alt.Chart(deviation, width=320, height=160)
            .mark_line(point=True)
            .encode(x=alt.X("layer:Q", title="layer boundary"), y=alt.Y("deviation:Q", title="‖Δr‖ / ‖r‖"))
            .properties(title=f"{self.model}: residual deviation under the edit"),
            "per_token_kl": alt.Chart(tokens, width=480, height=140)
            .mark_bar()
            .encode(
                x=alt.X("position:O", axis=None),
                y=alt.Y("kl:Q", title="KL(base ‖ edited)"),
                tooltip=["position", "token", "kl", "ce_delta"],
            )
            .properties(title="per token"),
        }


class ReplaySession:
    """A batch [B, T] (or one prompt) and its cached unedited run; apply / generate under edits."""

    def __init__(
        self,
        handle: ModelHandle,
        tokens: torch.Tensor,
        data: dict[str, Any] | None = None,
        engine_of: ReplaySession | None = None,
        backend: str | None = None,
    ) -> None:
        """`engine_of` (another session) shares its model tensors and caches: batches of one long input.
        `backend` picks the kernels: None (Triton on CUDA, torch elsewhere), "torch" or "triton"."""
        self.handle = handle
        tokens = tokens if tokens.ndim == 2 else tokens[None]
        if engine_of is not None and backend not in (None, engine_of.engine.stack.backend):
            raise WorkbenchError("backend conflicts with engine_of's; a shared stack has one backend")
        if engine_of is not None:
            stack, cache = engine_of.engine.stack, engine_of.engine.cache.sharing_loaded()
        else:
            stack, cache = Stack.of(handle, backend=backend), None
        self.engine = ReplayEngine(handle, tokens, stack, cache)
        self.data = data or {"tokens": int(self.engine.tokens.numel())}
        self._base_continuations: dict[tuple[int, int], torch.Tensor] = {}  # (row, n) -> tokens
        self._token_texts: dict[int, str] = {}
        self._base_top: tuple[int, list] = (0, [])  # (k, the unedited run's top k per first-row position)

    @classmethod
    def from_text(
        cls,
        handle: ModelHandle,
        text: str,
        backend: str | None = None,
        engine_of: ReplaySession | None = None,
    ) -> ReplaySession:
        """One prompt; `engine_of` (a session on the same model) reuses its tensors and caches."""
        ids = handle.tokenizer(text, add_special_tokens=False)["input_ids"]
        data = {"text": text, "tokens": len(ids)}
        return cls(handle, torch.tensor([ids]), data, engine_of=engine_of, backend=backend)

    def plan(self, edits: Any) -> tuple[list[Edit], Plan]:
        """Edits (objects or their JSON) compiled once and cached by their JSON."""
        parsed = parse_edits([edits] if isinstance(edits, Edit) else edits)
        key = PlanKey.of(parsed)
        plans = self.engine.cache.plans_for(key)
        plan = plans.get(key)
        if plan is None:
            plan = plans.put(key, self.engine.compile(parsed))
        return parsed, plan

    def apply(
        self,
        edits: Any,
        chosen: list[int] | None = None,
        cancelled: Callable[[], bool] | None = None,
        top_k: int = 0,
    ) -> ReplayResult:
        """The edits' effect on this batch: replays from the first edited layer.

        `cancelled`, asked between layers, abandons the replay (ReplayAbandoned) when it returns True.
        `top_k` > 0 adds each first-row token's k most likely next tokens, base and edited, to per_token
        (`top_base`, `top_edited`: [token, probability] pairs).
        """
        parsed, plan = self.plan(edits)
        replayed = self.engine.replay(plan, cancelled)
        fx = effects(self.engine, replayed, chosen, top_k)
        summary = fx.summary()
        first_row = self.engine.tokens[0].tolist()
        ce_delta = (fx.ce_edited[0].double() - fx.ce_base[0].double()).tolist() + [None]
        per_token = [
            {"position": i, "token": self.token_text(t), "ce_delta": ce_delta[i], "kl": float(fx.kl[0, i])}
            for i, t in enumerate(first_row)
        ]
        if top_k > 0:
            if self._base_top[0] != top_k:  # the unedited run's top k does not change between edits
                self._base_top = (top_k, self._top(self.engine.base_logprobs[0], top_k))
            edited = self._texts(*(t[0] for t in fx.top_edited))
            for row, base, new in zip(per_token, self._base_top[1], edited, strict=True):
                row["top_base"], row["top_edited"] = base, new
        provenance = Provenance(
            model=self.handle.facts.to_dict(),
            data=self.data,
            definition=DEFINITION,
            settings={
                "edits": [e.to_dict() for e in parsed],
                "chosen": chosen,
                "kernels": self.engine.stack.backend or "auto",
            },
        )
        return ReplayResult(
            model=self.handle.name,
            edits=[e.to_dict() for e in parsed],
            first_layer=plan.first_layer,
            tokens=int(self.engine.tokens.numel()),
            ce_base=summary["ce_base"],
            ce_edited=summary["ce_edited"],
            ce_delta=summary["ce_delta"],
            kl=summary["kl"],
            top1_agreement=summary["top1_agreement"],
            resid_deviation=summary["resid_deviation"],
            per_token=per_token,
            seconds=replayed.seconds,
            apply_seconds=plan.apply_seconds,
            full_forward_seconds=self.engine.full_forward_seconds,
            provenance=provenance,
            logit_diff=summary.get("logit_diff"),
        )

    def token_text(self, token: int) -> str:
        """One token decoded on its own (memoised: widgets decode the same ids again and again)."""
        text = self._token_texts.get(token)
        if text is None:
            text = self._token_texts[token] = self.handle.tokenizer.decode([token])
        return text

    def _top(self, logprobs: torch.Tensor, k: int) -> list[list[list]]:
        """[T, V] log-probabilities -> per position the k most likely [token text, probability] pairs."""
        return self._texts(*logprobs.topk(k, dim=-1))

    def _texts(self, values: torch.Tensor, ids: torch.Tensor) -> list[list[list]]:
        """[T, k] top-k log-probabilities and token ids -> per position [token text, probability] pairs
        (exp of the k values only, not of the whole vocabulary)."""
        values = values.exp()
        return [
            [[self.token_text(t), round(p, 5)] for t, p in zip(row_ids, row_p, strict=True)]
            for row_ids, row_p in zip(ids.tolist(), values.tolist(), strict=True)
        ]

    def generate(self, edits: Any, n_tokens: int, row: int = 0) -> dict[str, Any]:
        """Greedy continuation of sequence `row` under the edits, beside the unedited one."""
        _, plan = self.plan(edits)
        prompt = self.engine.tokens[row : row + 1]
        if (row, n_tokens) not in self._base_continuations:
            self._base_continuations[(row, n_tokens)] = self.engine.generate(None, n_tokens, prompt)[0]
        base = self._base_continuations[(row, n_tokens)]
        edited = self.engine.generate(plan, n_tokens, prompt)[0]
        decode = self.handle.tokenizer.decode
        return {
            "prompt": decode(prompt[0].tolist()),
            "base": decode(base.tolist()),
            "edited": decode(edited.tolist()),
            "base_ids": base.tolist(),
            "edited_ids": edited.tolist(),
            "agreement": float((base == edited).float().mean()) if n_tokens else 1.0,
        }


def merged(results: list[ReplayResult]) -> ReplayResult:
    """Results of the same edits on consecutive batches, as one (means weighted by token counts).

    The CLI replays long inputs batch by batch so that memory does not grow with the number of tokens.
    """
    if len(results) == 1:
        return results[0]
    first = results[0]
    weights = [r.tokens for r in results]
    total = sum(weights)

    def mean(name: str):
        """The token-weighted mean of a field: a number, or a list element by element (None stays None)."""
        values = [getattr(r, name) for r in results]
        if values[0] is None:
            return None
        if isinstance(values[0], list):
            return [
                sum(v[i] * w for v, w in zip(values, weights, strict=True)) / total
                for i in range(len(values[0]))
            ]
        return sum(v * w for v, w in zip(values, weights, strict=True)) / total

    deviation, logit_diff = mean("resid_deviation"), mean("logit_diff")
    return dataclasses.replace(
        first,
        tokens=total,
        ce_base=mean("ce_base"),
        ce_edited=mean("ce_edited"),
        ce_delta=mean("ce_delta"),  # each batch's float64 mean of per-token differences, weighted
        kl=mean("kl"),
        top1_agreement=mean("top1_agreement"),
        resid_deviation=deviation,
        logit_diff=logit_diff,
        seconds=sum(r.seconds for r in results),
        apply_seconds=sum(r.apply_seconds for r in results),
        full_forward_seconds=sum(r.full_forward_seconds for r in results),
    )
