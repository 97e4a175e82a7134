"""FinerCut-style greedy sublayer removal (docs/methods.md#greedy-sublayer-removal): remove, one at a
time, the attention or MLP sublayer whose removal changes the model's output least, and trace the loss
as sublayers go.

"Changes the output least" = smallest mean KL(base ‖ pruned) of the next-token distribution on a
calibration batch; the loss curve is measured on separate held-out windows. Each candidate is replayed
from its own layer, starting from the current pruned model's cached residual (so a step costs about
half a forward per candidate, not a full one).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import altair as alt
import pandas as pd
import torch

from workbench.errors import WorkbenchError
from workbench.models import ModelHandle
from workbench.progress import Bar
from workbench.replay.edits import SublayerSkip
from workbench.replay.effects import kl_per_token, next_token_loss
from workbench.replay.engine import ReplayEngine, run_layers
from workbench.results import Provenance, Result, register_result

DEFINITION = (
    "FinerCut-style greedy removal: at each step every remaining attention / MLP sublayer is removed "
    "in turn (its output set to zero) on top of those already removed; the one giving the smallest mean "
    "KL(base ‖ pruned) on the calibration windows is removed for good. loss = mean next-token "
    "cross-entropy (nats) on the held-out windows after each step; share = removed / (2 × n_layers)."
)


@register_result
@dataclass(kw_only=True)
class FinerCutResult(Result):
    kind = "finercut"
    title = "Greedy sublayer removal (FinerCut)"

    model: str
    n_sublayers: int
    calibration_tokens: int
    eval_tokens: int
    base_loss: float
    steps: list[dict]  # {"step", "removed", "share", "layer", "sublayer", "kl", "loss"}
    seconds: float
    provenance: Provenance

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.steps).assign(model=self.model)

    def charts(self) -> dict[str, alt.Chart]:
        rows = [
            {"share": 0.0, "loss": self.base_loss, "sublayer": "none", "layer": None, "kl": 0.0}
        ] + self.steps
        data = pd.DataFrame(rows)
        line = (
            alt.Chart(data, width=360, height=200)
            .mark_line(color="#888")
            .encode(
                x=alt.X("share:Q", title="share of sublayers removed"),
                y=alt.Y("loss:Q", title="held-out loss (nats)"),
            )
        )
        points = line.mark_point(filled=True, size=50).encode(
            color=alt.Color("sublayer:N", title="removed"),
            tooltip=["share", "layer", "sublayer", "loss", "kl"],
        )
        return {"curve": (line + points).properties(title=f"{self.model}: greedy sublayer removal")}


def heldout_loss(engine: ReplayEngine, heldout: torch.Tensor, plan, batch_size: int) -> float:
    """Mean next-token loss of the (pruned) model on held-out windows, batch by batch: memory does not
    grow with the number of held-out tokens (nothing of them is cached)."""
    total, count = 0.0, 0
    for batch in heldout.split(batch_size):
        logits = engine.forward(plan, batch.to(engine.tokens.device)).logits
        losses = next_token_loss(torch.log_softmax(logits.float(), -1), batch.to(logits.device))
        total, count = total + float(losses.sum()), count + losses.numel()
    return total / count


def finercut_calibration(handle: ModelHandle, source, context: int, n_tokens: int, seed: int):
    """The windows on which each candidate's KL is measured: `n_tokens` of `source` (a CalibrationSource)
    in whole `context` windows, chosen with the seed itself."""
    from workbench.calibration import calibration_windows

    return calibration_windows(handle, source, context, n_tokens, seed=seed)


def greedy_removal(
    handle: ModelHandle,
    calibration: torch.Tensor,
    heldout: torch.Tensor,
    max_share: float = 0.5,
    progress: bool = True,
    batch_size: int = 8,
    data: dict | None = None,
) -> FinerCutResult:
    """Remove sublayers greedily until `max_share` of them are gone; the loss after every step."""
    if not 0 < max_share <= 1:
        raise WorkbenchError(f"max_share is the share of sublayers to remove, in (0, 1]; got {max_share}")
    start = time.perf_counter()
    calib = ReplayEngine(handle, calibration)
    stack, n = calib.stack, calib.stack.n_layers
    rope = stack.rope(calibration.shape[1])
    remaining = [(layer, target) for layer in range(n) for target in ("attn", "mlp")]
    removed: list[SublayerSkip] = []
    steps = []
    n_steps = int(max_share * len(remaining) + 1e-9)
    bar = Bar(n_steps, unit="steps", bar_unit="it", desc=f"FinerCut {handle.name}", show=progress)
    with torch.inference_mode():
        current = calib.base
        for step in range(1, n_steps + 1):
            best = None
            for layer, target in remaining:
                plan = calib.compile([*removed, SublayerSkip(layer, target)])
                after = run_layers(stack, current.resid[layer], layer, plan, rope)
                edited_lp = torch.log_softmax(stack.logits(after[-1]).float(), dim=-1)
                kl = float(kl_per_token(calib.base_logprobs, edited_lp).mean())
                if best is None or kl < best[0]:
                    best = (kl, layer, target)
            kl, layer, target = best
            remaining.remove((layer, target))
            removed.append(SublayerSkip(layer, target))
            current = calib.forward(calib.compile(removed))
            loss = heldout_loss(calib, heldout, calib.compile(removed), batch_size)
            steps.append(
                {
                    "step": step,
                    "removed": len(removed),
                    "share": round(len(removed) / (2 * n), 4),
                    "layer": layer,
                    "sublayer": target,
                    "kl": kl,
                    "loss": loss,
                }
            )
            bar.update()
            bar.set_postfix(loss=f"{loss:.3f}", last=f"L{layer}.{target}")
    bar.close()
    base_loss = heldout_loss(calib, heldout, None, batch_size)
    provenance = Provenance(
        model=handle.facts.to_dict(),
        data=data or {"calibration_tokens": int(calibration.numel()), "eval_tokens": int(heldout.numel())},
        definition=DEFINITION,
        settings={"max_share": max_share},
    )
    return FinerCutResult(
        model=handle.name,
        n_sublayers=2 * n,
        calibration_tokens=int(calibration.numel()),
        eval_tokens=int(heldout.numel()),
        base_loss=base_loss,
        steps=steps,
        seconds=time.perf_counter() - start,
        provenance=provenance,
    )
