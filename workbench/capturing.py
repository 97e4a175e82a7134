"""`workbench capture`: stream probes into an activation store in a run folder, with a summary result.

While the store fills, two reducers fold what the report shows (mean attention entropy per head,
expert load per layer), so the report never has to read the shards back.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import altair as alt
import pandas as pd
import torch

from workbench.errors import WorkbenchError
from workbench.probes.sinks import Additive, TeeSink
from workbench.results import Provenance, Result, register_result
from workbench.store.format import DTYPES

_ATTENTION = re.compile(r"^attention\.blocks\.(\d+)\.(pattern|summary)$")
_TOPK = re.compile(r"^routing\.blocks\.(\d+)\.topk_indices$")


class AttentionEntropyReducer(Additive):
    """Mean over query tokens of each head's attention entropy (nats), per layer."""

    additive = ("sums", "count")

    def __init__(self) -> None:
        self.sums: dict[int, torch.Tensor] = {}
        self.count = 0

    def update(self, values: dict[str, torch.Tensor], meta: dict[str, torch.Tensor]) -> None:
        for name, value in values.items():
            m = _ATTENTION.match(name)
            if not m:
                continue
            v = value.float()
            entropy = v[..., 0] if m.group(2) == "summary" else -(v * v.clamp_min(1e-30).log()).sum(-1)
            layer = int(m.group(1))
            self.sums[layer] = self.sums.get(layer, 0) + entropy.sum(0).double()
        self.count += len(meta["token"])

    def result(self) -> dict[int, list[float]]:
        return {layer: (s / max(1, self.count)).tolist() for layer, s in sorted(self.sums.items())}


class ExpertLoadReducer(Additive):
    """f_e per layer: the share of tokens that chose expert e (docs/methods.md#load-and-balance)."""

    additive = ("counts", "count")

    def __init__(self, n_experts: int) -> None:
        self.n_experts = n_experts
        self.counts: dict[int, torch.Tensor] = {}
        self.count = 0

    def update(self, values: dict[str, torch.Tensor], meta: dict[str, torch.Tensor]) -> None:
        for name, value in values.items():
            m = _TOPK.match(name)
            if m:
                layer = int(m.group(1))
                counts = torch.bincount(value.flatten(), minlength=self.n_experts).double()
                self.counts[layer] = self.counts.get(layer, 0) + counts
        self.count += len(meta["token"])

    def result(self) -> dict[int, list[float]]:
        return {layer: (c / max(1, self.count)).tolist() for layer, c in sorted(self.counts.items())}


@register_result
@dataclass(kw_only=True)
class CaptureResult(Result):
    kind = "capture"
    title = "Capture"

    model: str
    tokens: int
    complete: bool
    fields: dict[str, dict]  # name -> {"shape", "dtype"}
    bytes: int
    shards: int
    provenance: Provenance
    attention_entropy: dict[str, list[float]] = field(default_factory=dict)  # layer -> per head
    expert_load: dict[str, list[float]] = field(default_factory=dict)  # layer -> per expert
    store: str = "store"  # where the store is: relative to the run folder, or a path or URL of its own

    def table(self) -> pd.DataFrame:
        """One row per stored field with its size; the last row is the whole store (shards included)."""
        rows = [
            {
                "field": n,
                "shape per token": str(tuple(f["shape"])),
                "dtype": f["dtype"],
                "MB": self.tokens
                * math.prod(f["shape"])
                * torch.empty(0, dtype=DTYPES[f["dtype"]]).element_size()
                / 1e6,
            }
            for n, f in self.fields.items()
        ]
        rows.append(
            {
                "field": f"all, with metadata: {self.tokens:,} tokens in {self.shards} shards",
                "shape per token": "",
                "dtype": "",
                "MB": self.bytes / 1e6,
            }
        )
        return pd.DataFrame(rows)

    def charts(self) -> dict[str, alt.Chart]:
        charts = {}
        if self.attention_entropy:
            title = f"{self.model}: mean attention entropy per head"
            charts["attention_entropy"] = _layer_heatmap(
                self.attention_entropy, "head", "entropy (nats)", title
            )
        if self.expert_load:
            title = f"{self.model}: expert load per layer (share of tokens)"
            charts["expert_load"] = _layer_heatmap(self.expert_load, "expert", "f_e", title)
        return charts


def _layer_heatmap(values: dict[str, list[float]], column: str, measure: str, title: str) -> alt.Chart:
    """Layers down, `column` (head or expert) across, colour = the measure."""
    data = pd.DataFrame(
        [
            {"layer": int(layer), column: i, measure: v}
            for layer, row in values.items()
            for i, v in enumerate(row)
        ]
    )
    return (
        alt.Chart(data, width=320, height=200)
        .mark_rect()
        .encode(
            x=alt.X(f"{column}:O"),
            y=alt.Y("layer:O", sort="descending"),
            color=alt.Color(f"{measure}:Q"),
            tooltip=["layer", column, measure],
        )
        .properties(title=title)
    )


SHARD_BYTES = 64 * 2**20


def shard_tokens(probes: list, handle, context: int, batch_size: int, target_bytes: int = SHARD_BYTES) -> int:
    """Tokens per shard: whole batches (so a resumed capture repeats a clean run's batches exactly),
    about `target_bytes` per shard (two shards are in memory at most: one filling, one being written)."""
    from workbench.store import estimate_bytes

    fields = [spec for probe in probes for spec in probe.fields(handle, context)]
    per_batch = context * batch_size
    batch_bytes = max(1, estimate_bytes(fields, per_batch))
    return per_batch * max(1, target_bytes // batch_bytes)


def capture_to_run(
    handle,
    windows,
    run,
    probes: list,
    resume: bool = False,
    batch_size: int = 8,
    tokens_per_shard: int | None = None,
    progress: bool = True,
    n_tokens: int | None = None,
    workers=None,
    store: str | None = None,
) -> CaptureResult:
    """Capture `probes` over `windows` into run.path/store (resumable), and save a CaptureResult in `run`.

    `workers` (`workbench.scale.cluster.Workers`): one Ray task per range of shards, all writing into one
    coordinated store (`workbench.scale.capture`) that reads as this store would. `store`: the store's
    location instead of run.path/store (a folder, file:// URL, or with `workers` object storage)."""
    from workbench.probes.capture import ReducerSink, StoreSink, capture
    from workbench.store import inspect_store
    from workbench.store.ranges import store_location
    from workbench.store.remote import is_remote

    if store is not None and is_remote(store) and workers is None:
        raise WorkbenchError(_REMOTE_NEEDS_WORKERS.format(store=store))
    location = store if store is not None and is_remote(store) else None
    location = location or (store_location(store) if store is not None else run.path / "store")

    per_batch = windows.context * batch_size  # shards hold whole batches, so resumes repeat batches exactly
    per_shard = shard_tokens(probes, handle, windows.context, batch_size)
    if tokens_per_shard:
        per_shard = -(-tokens_per_shard // per_batch) * per_batch
    info = {"model": handle.facts.to_dict(), "data": windows.slice_info, "command": run.command}
    if resume:
        _check_same_capture(location, info)
    entropy, load = AttentionEntropyReducer(), ExpertLoadReducer(handle.facts.n_experts or 1)
    if workers is not None:
        from workbench.scale.capture import sharded_capture

        outcome = sharded_capture(
            handle,
            windows,
            probes,
            location,
            info,
            workers=workers,
            batch_size=batch_size,
            tokens_per_shard=per_shard,
            resume=resume,
            reducers=[entropy, load],
            n_tokens=n_tokens,
            progress=progress,
            on_open=run.begin,
        )
        refold = outcome.reducers is None
    else:
        sink = StoreSink(location, info, resume=resume, tokens_per_shard=per_shard)
        capture(  # the run folder says "running" once the store is open (its checks and lock passed)
            handle,
            windows,
            probes,
            TeeSink(sink, ReducerSink([entropy, load]), opened=run.begin),
            batch_size=batch_size,
            progress=progress,
            n_tokens=n_tokens,
        )
        refold = sink.resumed_from > 0
    if refold:  # the reducers saw only the new tokens: fold them again over the whole store
        entropy, load = AttentionEntropyReducer(), ExpertLoadReducer(handle.facts.n_experts or 1)
        _fold_store(location, [entropy, load])
    summary = inspect_store(location)
    result = CaptureResult(
        model=handle.name,
        tokens=summary["tokens"],
        complete=summary["complete"],
        fields=summary["hooks"],
        bytes=summary["bytes"],
        shards=summary["shards"],
        store=str(location) if store is not None else "store",
        provenance=Provenance(
            model=handle.facts.to_dict(),
            data=windows.slice_info,
            seed=windows.slice_info.get("selection_seed"),
            definition="values of the named hooks per token, as stored; attention rows are "
            "[head, key] per query token; routing from the router's own output",
            settings={"batch_size": batch_size, "tokens_per_shard": per_shard}
            | ({"workers": workers.n} if workers is not None else {}),
            command=run.command,
        ),
        attention_entropy={str(k): v for k, v in entropy.result().items()},
        expert_load={str(k): v for k, v in load.result().items()},
    )
    run.save([result], files=["store"] if store is None else [])
    return result


_REMOTE_NEEDS_WORKERS = (
    "{store} is object storage, which a capture writes through coordinated workers (each range staged "
    "locally, then uploaded): add --workers N (1 or more; the `scale` extra)."
)


def check_capture_out(out, resume: bool, store: str | None = None, workers: int | None = None) -> None:
    """Refuse, before anything is written, an --out (or --store) whose store this capture must not write
    into; a store on object storage is checked when its coordinator opens it."""
    from pathlib import Path

    from workbench.store.opening import check_folder
    from workbench.store.ranges import store_location
    from workbench.store.remote import is_remote

    if store is not None and is_remote(store):
        if workers is None:
            raise WorkbenchError(_REMOTE_NEEDS_WORKERS.format(store=store))
        return
    check_folder(store_location(store) if store is not None else Path(out).expanduser() / "store", resume)


def _fold_store(path, reducers: list) -> None:
    """Run reducers over the attention and routing fields already in a store, batch by batch."""
    from workbench.store import StoreReader

    reader = StoreReader(path)
    names = [n for n in reader.fields if _ATTENTION.match(n) or _TOPK.match(n)]
    if not names:
        return
    for batch in reader.iter_batches(names, batch_size=4096):
        values = {n: batch[n] for n in names}
        for reducer in reducers:
            reducer.update(values, batch)


def _check_same_capture(path, info: dict) -> None:
    """Refuse to resume a store that another model or another data slice started."""
    from workbench.store.format import MANIFEST, load_manifest
    from workbench.store.remote import Remote, is_remote

    if is_remote(path):
        manifest = Remote(str(path)).read_json(MANIFEST)
    else:
        manifest = load_manifest(path) if (path / MANIFEST).is_file() else None
    if manifest is None:
        return
    before = manifest.get("info", {})
    for key, now in (("model", info["model"]["checkpoint"]), ("data", info["data"])):
        then = before.get("model", {}).get("checkpoint") if key == "model" else before.get("data")
        if then != now:
            raise WorkbenchError(
                f"Cannot resume {path}: it was started with {key} {then!r}, not {now!r}. Resume with the "
                "same --model, --corpus/--text, --tokens, --context and --seed, or use a new --out."
            )
