"""`workbench sparsity`: activation density per layer, per input kind and per domain, as a result."""

from __future__ import annotations

from dataclasses import dataclass, field

import altair as alt
import pandas as pd

from workbench.results import Provenance, Result, register_result
from workbench.sparsity import FIRING_BINS, Definition, firing_histogram, mean_over_layers, measure

INPUT_KINDS = ("heldout", "train", "random")


@register_result
@dataclass(kw_only=True)
class SparsityResult(Result):
    kind = "sparsity"
    title = "Activation sparsity (lazy neurons)"

    model: str
    definition: str
    tokens: int
    density_mean: float
    layers: list[dict]
    by_input: dict[str, dict]
    provenance: Provenance
    by_domain: dict[str, list[float]] = field(default_factory=dict)  # domain -> per-layer mean density
    density_histograms: dict[str, list[int]] = field(default_factory=dict)  # layer -> tokens per k active
    firing_histograms: dict[str, list[int]] = field(default_factory=dict)  # layer -> neurons per freq bin
    thresholds: dict[str, float] = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.layers).assign(model=self.model, definition=self.definition)

    def charts(self) -> dict[str, alt.Chart]:
        by_layer = pd.DataFrame(
            [
                {"input": kind, "layer": layer, "density": d}
                for kind, body in self.by_input.items()
                for layer, d in enumerate(body["layers"])
            ]
        )
        charts = {
            "density_by_layer": alt.Chart(by_layer, width=300, height=180)
            .mark_line(point=True)
            .encode(
                x="layer:O",
                y=alt.Y("density:Q", title=f"mean density ({self.definition})"),
                color="input:N",
                tooltip=["input", "layer", "density"],
            )
            .properties(title=f"{self.model}: neuron density by layer"),
        }
        if self.density_histograms:
            rows = []
            for layer, hist in self.density_histograms.items():
                total, d_mlp = sum(hist), len(hist) - 1
                step = max(1, d_mlp // 50)  # at most ~50 points per layer
                for k in range(0, d_mlp + 1, step):
                    rows.append(
                        {"layer": layer, "density": k / d_mlp, "share": sum(hist[k : k + step]) / total}
                    )
            charts["density_distribution"] = (
                alt.Chart(pd.DataFrame(rows), width=300, height=180)
                .mark_line(interpolate="step-after")
                .encode(
                    x=alt.X("density:Q", title="per-token density"),
                    y=alt.Y("share:Q", title="share of tokens"),
                    color="layer:N",
                    tooltip=["layer", "density", "share"],
                )
                .properties(title="per-token density, by layer")
            )
        if self.firing_histograms:
            rows = [
                {"layer": layer, "firing frequency": i / FIRING_BINS, "neurons": n}
                for layer, hist in self.firing_histograms.items()
                for i, n in enumerate(hist)
            ]
            charts["firing_frequency"] = (
                alt.Chart(pd.DataFrame(rows), width=300, height=180)
                .mark_line(interpolate="step-after")
                .encode(
                    x=alt.X("firing frequency:Q", title="share of tokens a neuron fires on"),
                    y=alt.Y("neurons:Q"),
                    color="layer:N",
                    tooltip=["layer", "firing frequency", "neurons"],
                )
                .properties(title="neuron firing frequency")
            )
        return charts


def default_definition(handle) -> str:
    """exact_zero for ReLU models (exact); the gate's sign (`positive`) for everything else."""
    return "exact_zero" if handle.facts.act_fn == "relu" else "positive"


def run_sparsity(
    handle,
    definition: str | None,
    inputs: list[str],
    n_tokens: int,
    context: int,
    batch_size: int,
    seed: int,
    corpus: str | None = None,
    text: list[str] | None = None,
    calibration_tokens: int = 2048,
    dense_threshold: float = 0.5,
    progress: bool = True,
    calibration_data: list[str] | None = None,
) -> SparsityResult:
    """Density statistics for each input kind; the first kind gives the per-layer table and histograms.

    Thresholds and the `train` input kind come from `calibration_data` (NAME[:SPLIT] or files), by default
    the train split of `corpus` (workbench/calibration.py).
    """
    from workbench.calibration import calibration_source, calibration_windows
    from workbench.corpus import check_context, random_windows, windows_for
    from workbench.errors import WorkbenchError

    check_context(handle, context)  # every input kind, random included, is refused alike
    spec = Definition.parse(definition or default_definition(handle))
    unknown = [k for k in inputs if k not in INPUT_KINDS]
    if unknown or not inputs:
        raise WorkbenchError(f"Unknown input kind(s) {unknown}; choose from {', '.join(INPUT_KINDS)}.")
    purpose = f"{spec.name}'s thresholds" if spec.needs_calibration else "--inputs train"
    source = None
    if spec.needs_calibration or "train" in inputs:  # resolved (or refused) before any forward pass
        source = calibration_source(corpus, text, calibration_data, purpose)
    calibration = None
    if spec.needs_calibration:  # thresholds come from the train split, never from the measured text
        calibration = calibration_windows(handle, source, context, calibration_tokens, seed=seed + 1)
    by_input, main, main_windows, train_data = {}, None, None, None
    for kind in inputs:
        if kind == "random":
            windows = random_windows(handle.facts.d_vocab, n_tokens, context, seed)
        elif kind == "train":
            windows = calibration_windows(handle, source, context, n_tokens, seed=seed)
            train_data = windows.slice_info
        else:
            windows = windows_for(
                handle, corpus=corpus, text=text, context=context, n_tokens=n_tokens, seed=seed
            )
        reducer = measure(handle, windows, spec, calibration, batch_size=batch_size, progress=progress)
        rows = reducer.layer_stats(dense_threshold)
        by_input[kind] = {
            "tokens": reducer.tokens,
            "density_mean": mean_over_layers(rows),
            "layers": [r["density_mean"] for r in rows],
        }
        if main is None:
            main, main_windows = (reducer, rows), windows
    reducer, rows = main
    by_domain = {
        d: (reducer.domain_active[:, i] / max(1, int(reducer.domain_tokens[i])) / reducer.d_mlp).tolist()
        for i, d in enumerate(main_windows.domains)
        if reducer.domain_tokens[i] > 0
    }
    provenance = Provenance(
        model=handle.facts.to_dict(),
        data=main_windows.slice_info,
        definition=spec.describe(handle.facts.gated_mlp),
        settings={
            "inputs": inputs,
            "calibration_tokens": calibration_tokens if calibration else 0,
            "calibration": calibration.slice_info if calibration else None,
            "train_inputs": train_data,
            "dense_threshold": dense_threshold,
            "batch_size": batch_size,
        },
        seed=seed,
    )
    return SparsityResult(
        model=handle.name,
        definition=spec.name,
        tokens=reducer.tokens,
        density_mean=mean_over_layers(rows),
        layers=rows,
        by_input=by_input,
        provenance=provenance,
        by_domain=by_domain,
        density_histograms={str(h.layer): reducer.histogram[j].tolist() for j, h in enumerate(reducer.hooks)},
        firing_histograms={str(k): v for k, v in firing_histogram(reducer).items()},
        thresholds={str(k): v for k, v in (reducer.thresholds or {}).items()},
    )
