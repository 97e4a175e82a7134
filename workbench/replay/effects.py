"""What an edit did, per token and overall: cross-entropy change, KL(base ‖ edited), top-1 agreement,
logit differences for chosen tokens, and the residual stream's relative deviation per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.replay.engine import Replayed, ReplayEngine


@dataclass
class Effects:
    """Per-token tensors (for charts and widgets) and their means (for JSON)."""

    ce_base: torch.Tensor  # [B, T-1] next-token loss, unedited
    ce_edited: torch.Tensor  # [B, T-1]
    kl: torch.Tensor  # [B, T] KL(base ‖ edited) of the next-token distributions, nats
    top1_agree: torch.Tensor  # [B, T] bool: same argmax token
    logit_diff: torch.Tensor | None  # [B, T, C] edited − base logit of each chosen token
    resid_deviation: list[float]  # per layer boundary l: mean over tokens of ‖r_e − r_b‖ / ‖r_b‖

    @property
    def ce_delta(self) -> float:
        """Mean of the per-token differences, in float64: a small delta is not lost in the rounding of two
        float32 means of large losses (relative error 7e-4 on a delta of 4e-4 nats, measured)."""
        return float((self.ce_edited.double() - self.ce_base.double()).mean())

    def summary(self) -> dict:
        out = {
            "ce_base": float(self.ce_base.double().mean()),
            "ce_edited": float(self.ce_edited.double().mean()),
            "ce_delta": self.ce_delta,
            "kl": float(self.kl.mean()),
            "top1_agreement": float(self.top1_agree.float().mean()),
            "resid_deviation": [round(v, 6) for v in self.resid_deviation],
        }
        if self.logit_diff is not None:
            out["logit_diff"] = self.logit_diff.mean(dim=(0, 1)).tolist()
        return out


def kl_per_token(base_logprobs: torch.Tensor, edited_logprobs: torch.Tensor) -> torch.Tensor:
    """[..., T]: KL(base ‖ edited) of the next-token distributions, nats."""
    return (base_logprobs.exp() * (base_logprobs - edited_logprobs)).sum(-1).clamp_min(0.0)


def next_token_loss(logprobs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """[B, T-1]: −log p(token t+1 | ≤ t)."""
    return -logprobs[:, :-1].gather(-1, tokens[:, 1:, None]).squeeze(-1)


def effects(engine: ReplayEngine, edited: Replayed, chosen: list[int] | None = None) -> Effects:
    """Compare an edited replay with the engine's cached unedited run."""
    with torch.inference_mode():
        base_lp = engine.base_logprobs
        edit_lp = torch.log_softmax(edited.trace.logits.float(), dim=-1)
        kl = (engine.base_probs * (base_lp - edit_lp)).sum(-1).clamp_min(0.0)  # kl_per_token, p_b cached
        agree = engine.base_top1 == edit_lp.argmax(-1)
        diff = None
        if chosen:
            ids = torch.tensor(chosen, device=base_lp.device)
            diff = edited.trace.logits[..., ids].float() - engine.base.logits[..., ids].float()
        deviation = []
        for base_r, edit_r in zip(engine.base.resid, edited.trace.resid, strict=True):
            num = (edit_r - base_r).float().norm(dim=-1)
            deviation.append(float((num / base_r.float().norm(dim=-1).clamp_min(1e-12)).mean()))
        return Effects(
            next_token_loss(base_lp, engine.tokens),
            next_token_loss(edit_lp, engine.tokens),
            kl,
            agree,
            diff,
            deviation,
        )
