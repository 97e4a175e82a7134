"""Records for reports: what a model is (facts, parameters by component) and what the data was."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

import altair as alt
import pandas as pd
import torch

from workbench.corpus import CORPORA, TokenWindows
from workbench.models import ModelHandle
from workbench.models.checkpoint import tensor_sizes
from workbench.results import Provenance, Result, register_result

COMPONENTS = (  # (substring of a Hugging Face parameter name, component), first match wins
    ("expert_gate", "router"),
    ("mlp.gate.", "router"),
    ("moe.gate.", "router"),
    ("router", "router"),
    ("expert", "experts"),
    ("mlp", "mlp"),
    ("attn", "attention"),
    ("norm", "norms"),
    ("ln_", "norms"),
    ("embed", "embeddings"),
    ("wte", "embeddings"),
    ("wpe", "embeddings"),
    ("lm_head", "unembedding"),
)


def parameters_by_component(handle: ModelHandle) -> dict[str, int]:
    """Parameter counts of the checkpoint as released, grouped by component (tied weights stored once)."""
    counts: Counter[str] = Counter()
    for name, size in tensor_sizes(handle.folder).items():
        counts[next((c for key, c in COMPONENTS if key in name), "other")] += size
    return dict(counts)


@register_result
@dataclass(kw_only=True)
class ModelFactsResult(Result):
    kind = "model_facts"
    title = "Model"

    facts: dict
    parameters: dict[str, int]
    provenance: Provenance

    @classmethod
    def of(cls, handle: ModelHandle) -> ModelFactsResult:
        prov = Provenance(
            model=handle.facts.to_dict(), data={}, definition="facts read from the loaded model"
        )
        return cls(facts=handle.facts.to_dict(), parameters=parameters_by_component(handle), provenance=prov)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(
            [{"fact": k, "value": "—" if v is None else str(v)} for k, v in self.facts.items()]
        )

    def charts(self) -> dict[str, alt.Chart]:
        data = pd.DataFrame([{"component": k, "parameters": v} for k, v in self.parameters.items()])
        chart = (
            alt.Chart(data, width=300, height=160)
            .mark_bar()
            .encode(
                x=alt.X("parameters:Q"),
                y=alt.Y("component:N", sort="-x", title=None),
                tooltip=["component", "parameters"],
            )
            .properties(title=f"{self.facts['name']}: parameters by component")
        )
        return {"parameters_by_component": chart}


@register_result
@dataclass(kw_only=True)
class CorpusFactsResult(Result):
    kind = "corpus_facts"
    title = "Data"

    source: dict
    tokens_by_domain: dict[str, int]
    documents_by_domain: dict[str, int]
    provenance: Provenance

    @classmethod
    def of(cls, windows: TokenWindows, handle: ModelHandle) -> CorpusFactsResult:
        source = dict(windows.slice_info)
        name = source.get("corpus")
        if name in CORPORA:
            spec = CORPORA.get(name)
            source |= {"licence": spec.licence}
            described = spec.folder / "SOURCE.json"
            if described.is_file():
                source |= {"description": json.loads(described.read_text())["description"]}
        counts = Counter(windows.domain.flatten().tolist())
        pairs = torch.unique(torch.stack([windows.doc.flatten(), windows.domain.flatten().int()]), dim=1)
        docs = Counter(windows.domains[d] for d in pairs[1].tolist())
        prov = Provenance(
            model=handle.facts.to_dict(),
            data=windows.slice_info,
            definition="tokens of the evaluated windows, by the domain label of each token",
        )
        return cls(
            source=source,
            tokens_by_domain={windows.domains[k]: v for k, v in sorted(counts.items())},
            documents_by_domain=dict(docs),
            provenance=prov,
        )

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {"domain": d, "tokens": n, "documents": self.documents_by_domain.get(d, 0)}
                for d, n in self.tokens_by_domain.items()
            ]
        )

    def charts(self) -> dict[str, alt.Chart]:
        chart = (
            alt.Chart(self.table(), width=260, height=140)
            .mark_bar()
            .encode(
                x=alt.X("tokens:Q"),
                y=alt.Y("domain:N", title=None),
                color=alt.Color("domain:N", legend=None),
                tooltip=["domain", "tokens", "documents"],
            )
            .properties(title="evaluated tokens by domain")
        )
        return {"tokens_by_domain": chart}
