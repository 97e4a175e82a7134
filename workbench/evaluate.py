"""Held-out cross-entropy, perplexity and next-token accuracy of any model handle, per domain.

Later analyses call `evaluate` to measure damage. A prediction of token t+1 from tokens ≤ t is
counted under the domain of token t+1 (the token being predicted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import altair as alt
import pandas as pd
import torch

from workbench.corpus import TokenWindows
from workbench.models import ModelHandle
from workbench.progress import Bar
from workbench.results import Provenance, Result, register_result

LOSS_BIN_WIDTH = 0.5  # nats; per-token loss histogram bins are [0, 0.5), [0.5, 1), ...
LOSS_BINS = 30  # the last bin also holds every loss >= 14.5 nats
DEFINITION = (
    "next-token cross-entropy (nats/token), perplexity = exp(mean loss), top-1 accuracy; packed "
    "windows, no BOS, every position predicted except each window's first token; domain = the "
    "predicted token's domain"
)


@dataclass
class DomainScore:
    loss: float
    perplexity: float
    accuracy: float
    tokens: int


@register_result
@dataclass(kw_only=True)
class EvalResult(Result):
    kind = "evaluation"
    title = "Held-out evaluation"

    model: str
    tokens: int
    loss: float
    perplexity: float
    accuracy: float
    by_domain: dict[str, DomainScore]
    provenance: Provenance
    loss_histogram: dict[str, list[int]] = field(default_factory=dict)  # domain -> counts per bin

    @classmethod
    def from_dict(cls, data: dict) -> EvalResult:
        result = super().from_dict(data)
        result.by_domain = {k: DomainScore(**v) for k, v in data["by_domain"].items()}
        return result

    def table(self) -> pd.DataFrame:
        rows = [{"domain": d, **vars(s)} for d, s in self.by_domain.items()]
        rows.append(
            {
                "domain": "all",
                "loss": self.loss,
                "perplexity": self.perplexity,
                "accuracy": self.accuracy,
                "tokens": self.tokens,
            }
        )
        return pd.DataFrame(rows).assign(model=self.model)

    def charts(self) -> dict[str, alt.Chart]:
        table = self.table()
        base = alt.Chart(table, width=260, height=160).encode(
            x=alt.X("domain:N", title=None),
            color=alt.Color("domain:N", legend=None),
            tooltip=["domain", "loss", "perplexity", "accuracy", "tokens"],
        )
        hist = pd.DataFrame(
            [
                {"domain": d, "loss_nats": i * LOSS_BIN_WIDTH, "share": c / max(1, sum(counts))}
                for d, counts in self.loss_histogram.items()
                for i, c in enumerate(counts)
            ]
        )
        charts = {
            "loss_by_domain": base.mark_bar()
            .encode(y=alt.Y("loss:Q", title="loss (nats/token)"))
            .properties(title=f"{self.model}: held-out loss"),
            "accuracy_by_domain": base.mark_bar()
            .encode(y=alt.Y("accuracy:Q", title="top-1 accuracy"))
            .properties(title=f"{self.model}: next-token accuracy"),
        }
        if not hist.empty:
            charts["loss_distribution"] = (
                alt.Chart(hist, width=420, height=160)
                .mark_line(interpolate="step-after")
                .encode(
                    x=alt.X("loss_nats:Q", title="per-token loss (nats)"),
                    y=alt.Y("share:Q", title="share of tokens"),
                    color="domain:N",
                    tooltip=["domain", "loss_nats", "share"],
                )
                .properties(title=f"{self.model}: distribution of per-token loss")
            )
        return charts


def _score(loss_sum: float, correct: int, n: int) -> DomainScore:
    mean = loss_sum / n if n else float("nan")
    return DomainScore(
        loss=mean,
        perplexity=math.exp(mean) if n else float("nan"),
        accuracy=correct / n if n else float("nan"),
        tokens=n,
    )


@torch.inference_mode()
def evaluate(
    handle: ModelHandle,
    windows: TokenWindows,
    batch_size: int = 8,
    progress: bool = True,
    seed: int | None = None,
) -> EvalResult:
    """Cross-entropy, perplexity and accuracy over all windows, overall and per domain."""
    n_dom = len(windows.domains)
    loss_sum = torch.zeros(n_dom, dtype=torch.float64)
    correct = torch.zeros(n_dom, dtype=torch.long)
    count = torch.zeros(n_dom, dtype=torch.long)
    hist = torch.zeros(n_dom, LOSS_BINS, dtype=torch.long)
    bar = Bar(windows.n_tokens, unit="tokens", desc=f"evaluate {handle.name}", show=progress)
    for batch in windows.batches(batch_size):
        logits = handle.logits(batch.tokens)[:, :-1].float()
        targets = batch.tokens[:, 1:].to(logits.device)
        logprobs = torch.log_softmax(logits, dim=-1)
        token_loss = -logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).cpu().double()
        hit = (logits.argmax(-1) == targets).cpu().long()
        dom = batch.domain[:, 1:].long().flatten()
        loss_sum.index_add_(0, dom, token_loss.flatten())
        correct.index_add_(0, dom, hit.flatten())
        count.index_add_(0, dom, torch.ones_like(dom))
        bins = (token_loss.flatten() / LOSS_BIN_WIDTH).long().clamp(0, LOSS_BINS - 1)
        hist.index_put_((dom, bins), torch.ones_like(dom), accumulate=True)
        bar.update(batch.tokens.numel())
    bar.close()
    overall = _score(loss_sum.sum().item(), int(correct.sum()), int(count.sum()))
    present = [(i, d) for i, d in enumerate(windows.domains) if count[i] > 0]  # a sample may miss a domain
    by_domain = {d: _score(loss_sum[i].item(), int(correct[i]), int(count[i])) for i, d in present}
    provenance = Provenance(
        model=handle.facts.to_dict(),
        data=windows.slice_info,
        definition=DEFINITION,
        settings={"batch_size": batch_size, "device": str(handle.device)},
        seed=seed,
    )
    return EvalResult(
        model=handle.name,
        tokens=overall.tokens,
        loss=overall.loss,
        perplexity=overall.perplexity,
        accuracy=overall.accuracy,
        by_domain=by_domain,
        provenance=provenance,
        loss_histogram={d: hist[i].tolist() for i, d in present},
    )
