"""Evaluating a transcoder (docs/methods.md#evaluation-metrics): reconstruction, sparsity, splicing.

Per batch, three forward passes over the same tokens: clean (also giving x and y), spliced (the MLP's
output replaced by the transcoder's), zero-ablated. Everything is folded per domain:
- L0 = mean number of active features per token; dead fraction = features that never fire here;
- FVU = Σ‖y − ŷ‖² / Σ‖y − ȳ‖², explained variance = 1 − FVU;
- CE (next-token cross-entropy, nats) clean, spliced and ablated; CE recovered =
  (CE_ablated − CE_spliced) / (CE_ablated − CE_clean);
- KL(clean ‖ spliced) and KL(clean ‖ ablated), mean per token; KL score = 1 − KL_spliced / KL_ablated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import altair as alt
import pandas as pd
import torch

from workbench.corpus import TokenWindows
from workbench.errors import WorkbenchError
from workbench.models import ModelHandle
from workbench.progress import Bar
from workbench.results import Provenance, Result, register_result
from workbench.transcoders.model import Transcoder
from workbench.transcoders.splice import mlp_replaced, transcoder_replacement, zero_replacement

DEFINITION = __doc__.split("\n\n", 1)[1].strip()
SUMS = (
    "tokens",
    "pairs",
    "l0",
    "err",
    "y2",
    "ce_clean",
    "ce_spliced",
    "ce_ablated",
    "kl_spliced",
    "kl_ablated",
)


def _token_losses(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy [b, pos-1], log-probabilities [b, pos-1, vocab]) of next-token prediction."""
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    ce = -logprobs.gather(-1, tokens[:, 1:, None].to(logits.device)).squeeze(-1)
    return ce, logprobs


def _kl(clean: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    return (clean.exp() * (clean - other)).sum(-1)


def scores(sums: dict[str, float]) -> dict[str, float]:
    """The reported numbers from folded sums (also used per domain)."""
    n, p = max(1.0, sums["tokens"]), max(1.0, sums["pairs"])
    ce = {k: sums[k] / p for k in ("ce_clean", "ce_spliced", "ce_ablated")}
    kl_s, kl_a = sums["kl_spliced"] / p, sums["kl_ablated"] / p
    gap = ce["ce_ablated"] - ce["ce_clean"]
    fvu = sums["err"] / max(1e-12, sums["y2"])
    return {
        "l0": sums["l0"] / n,
        "fvu": fvu,
        "explained_variance": 1 - fvu,
        **ce,
        "ce_recovered": (ce["ce_ablated"] - ce["ce_spliced"]) / gap if gap else float("nan"),
        "kl_spliced": kl_s,
        "kl_ablated": kl_a,
        "kl_score": 1 - kl_s / kl_a if kl_a else float("nan"),
        "tokens": int(sums["tokens"]),
    }


@register_result
@dataclass(kw_only=True)
class TranscoderEval(Result):
    kind = "transcoder_eval"
    title = "Transcoder: reconstruction and spliced-in quality"

    model: str
    layer: int
    arch: str
    width: int
    k: int | None
    l0: float
    fvu: float
    explained_variance: float
    dead_fraction: float
    ce_clean: float
    ce_spliced: float
    ce_ablated: float
    ce_recovered: float
    kl_spliced: float
    kl_ablated: float
    kl_score: float
    tokens: int
    provenance: Provenance
    by_domain: dict[str, dict] = field(default_factory=dict)
    firing: list[int] = field(default_factory=list)  # per feature: tokens on which it fired

    def compact(self) -> dict:
        keep = (
            "l0",
            "fvu",
            "dead_fraction",
            "ce_clean",
            "ce_spliced",
            "ce_ablated",
            "ce_recovered",
            "kl_score",
        )
        return {k: getattr(self, k) for k in keep} | {"tokens": self.tokens}

    def table(self) -> pd.DataFrame:
        rows = [{"domain": "all", **{k: getattr(self, k) for k in scores_keys()}}]
        rows += [{"domain": d, **{k: v[k] for k in scores_keys()}} for d, v in self.by_domain.items()]
        return pd.DataFrame(rows).assign(model=self.model, layer=self.layer, arch=self.arch)

    def charts(self) -> dict[str, alt.Chart]:
        rows = [
            {"domain": d, "model": which.replace("ce_", ""), "CE": v[which]}
            for d, v in {"all": {k: getattr(self, k) for k in scores_keys()}, **self.by_domain}.items()
            for which in ("ce_clean", "ce_spliced", "ce_ablated")
        ]
        density = pd.DataFrame(
            {"log10 firing frequency": [math.log10(max(f, 0.5) / max(1, self.tokens)) for f in self.firing]}
        )
        return {
            "ce": alt.Chart(pd.DataFrame(rows), width=240, height=160)
            .mark_bar()
            .encode(
                x="model:N",
                y=alt.Y("CE:Q", title="cross-entropy (nats)"),
                column="domain:N",
                color="model:N",
                tooltip=["domain", "model", "CE"],
            )
            .properties(title=f"{self.model} layer {self.layer}: MLP clean, spliced, ablated"),
            "feature_density": alt.Chart(density, width=300, height=160)
            .mark_bar()
            .encode(x=alt.X("log10 firing frequency:Q", bin=alt.Bin(maxbins=40)), y="count()")
            .properties(title="feature firing frequency (log10; dead features at the left edge)"),
        }


def scores_keys() -> tuple[str, ...]:
    return (
        "l0",
        "fvu",
        "explained_variance",
        "ce_clean",
        "ce_spliced",
        "ce_ablated",
        "ce_recovered",
        "kl_spliced",
        "kl_ablated",
        "kl_score",
        "tokens",
    )


def check_fits(handle: ModelHandle, transcoder: Transcoder) -> None:
    """Refuse, with what is wrong, a transcoder whose input width is not the model's d_model."""
    if handle.facts.d_model != transcoder.cfg.d_in:
        raise WorkbenchError(
            f"The transcoder reads d_in={transcoder.cfg.d_in}, but {handle.name} has d_model "
            f"{handle.facts.d_model}."
        )


@torch.inference_mode()
def evaluate_transcoder(
    handle: ModelHandle,
    transcoder: Transcoder,
    windows: TokenWindows,
    batch_size: int = 8,
    progress: bool = True,
    seed: int = 0,
) -> TranscoderEval:
    check_fits(handle, transcoder)
    layer = transcoder.cfg.layer
    n_dom = len(windows.domains)
    sums = {k: torch.zeros(n_dom, dtype=torch.float64) for k in SUMS}
    y_sum = torch.zeros(n_dom, transcoder.cfg.d_out, dtype=torch.float64)
    firing = torch.zeros(transcoder.width, dtype=torch.long)
    seen: dict[str, torch.Tensor] = {}

    def keep(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seen["x"], seen["y"] = x.float(), y.float()
        return y

    bar = Bar(windows.n_tokens, unit="tokens", desc=f"evaluate transcoder L{layer}", show=progress)
    for batch in windows.batches(batch_size):
        tokens = batch.tokens
        with mlp_replaced(handle, layer, keep):
            ce_clean, lp_clean = _token_losses(handle.logits(tokens), tokens)
        with mlp_replaced(handle, layer, transcoder_replacement(transcoder)):
            ce_spliced, lp_spliced = _token_losses(handle.logits(tokens), tokens)
        with mlp_replaced(handle, layer, zero_replacement):
            ce_ablated, lp_ablated = _token_losses(handle.logits(tokens), tokens)
        x = seen["x"].reshape(-1, seen["x"].shape[-1])
        y = seen["y"].reshape(-1, seen["y"].shape[-1])
        out = transcoder(x)
        z = transcoder.dense(out.encoded)
        active = z > 0
        firing += active.sum(0)
        dom = batch.domain.flatten().long()
        pair_dom = batch.domain[:, 1:].flatten().long()
        per_token = {
            "tokens": torch.ones(len(dom), dtype=torch.float64),
            "l0": active.sum(-1).double(),
            "err": (y - out.y_hat).pow(2).sum(-1).double(),
            "y2": y.pow(2).sum(-1).double(),
        }
        per_pair = {
            "pairs": torch.ones(len(pair_dom), dtype=torch.float64),
            "ce_clean": ce_clean.flatten().double(),
            "ce_spliced": ce_spliced.flatten().double(),
            "ce_ablated": ce_ablated.flatten().double(),
            "kl_spliced": _kl(lp_clean, lp_spliced).flatten().double(),
            "kl_ablated": _kl(lp_clean, lp_ablated).flatten().double(),
        }
        for name, values in per_token.items():
            sums[name].index_add_(0, dom, values)
        for name, values in per_pair.items():
            sums[name].index_add_(0, pair_dom, values)
        y_sum.index_add_(0, dom, y.double())
        bar.update(tokens.numel())
    bar.close()

    def folded(mask: torch.Tensor) -> dict[str, float]:
        part = {k: float(v[mask].sum()) for k, v in sums.items()}
        mean = y_sum[mask].sum(0) / max(1.0, part["tokens"])
        part["y2"] = part["y2"] - part["tokens"] * float(mean.pow(2).sum())  # Σ‖y − ȳ‖²
        return part

    overall = scores(folded(torch.ones(n_dom, dtype=torch.bool)))
    by_domain = {
        d: scores(folded(torch.arange(n_dom) == i))
        for i, d in enumerate(windows.domains)
        if sums["tokens"][i] > 0
    }
    cfg = transcoder.cfg
    provenance = Provenance(
        model=handle.facts.to_dict(),
        data=windows.slice_info,
        definition=DEFINITION,
        settings={"transcoder": cfg.to_dict(), "batch_size": batch_size},
        seed=seed,
    )
    return TranscoderEval(
        model=handle.name,
        layer=layer,
        arch=cfg.arch,
        width=cfg.width,
        k=cfg.k,
        dead_fraction=float((firing == 0).float().mean()),
        provenance=provenance,
        by_domain=by_domain,
        firing=firing.tolist(),
        **{k: overall[k] for k in scores_keys()},
    )
