"""`run_sparsity`: activation density of the measured windows, per layer, per input kind and per domain.

    settings = SparsitySettings(definition="exact_zero", inputs=("heldout", "train", "random"))
    result = run_sparsity(handle, windows, settings)

Input kinds: `heldout`, the measured text (the windows given); `random`, uniformly random token ids in
windows of the same shape (the lazy-neuron paper's random-input experiment); `train`, windows of the
calibration source (the train split of the corpus in use, `workbench.calibration`). Both are drawn
with `settings.seed`; the thresholds of `magnitude@P` and `cett@R` come from other windows of the
calibration source, drawn with seed + 1 (`thresholds.sparsity_calibration`), never from the measured text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workbench.calibration import CalibrationSource, calibration_source, calibration_windows, source_of
from workbench.corpus import TokenWindows, check_context, random_windows
from workbench.errors import WorkbenchError
from workbench.models import ModelHandle
from workbench.results import Provenance
from workbench.settings import Settings
from workbench.sparsity.defaults import CALIBRATION_TOKENS, DENSE_THRESHOLD, INPUT_KINDS, INPUTS
from workbench.sparsity.definitions import Definition, default_definition
from workbench.sparsity.density import DensityReducer, firing_histogram, mean_over_layers, measure
from workbench.sparsity.result import SparsityResult
from workbench.sparsity.thresholds import sparsity_calibration

if TYPE_CHECKING:
    from workbench.scale.cluster import Workers


@dataclass(frozen=True, kw_only=True)
class SparsitySettings(Settings):
    """What `run_sparsity` measures and how; every default here (torch-free ones in `defaults.py`)."""

    definition: str | None = None  # None: exact_zero for ReLU models, positive otherwise
    inputs: tuple[str, ...] = INPUTS  # input kinds, in order; the first gives the per-layer table
    calibration_tokens: int = CALIBRATION_TOKENS  # for magnitude@P and cett@R thresholds
    dense_threshold: float = DENSE_THRESHOLD
    batch_size: int = 8
    seed: int = 0  # random and train inputs; calibration windows use seed + 1

    def __post_init__(self) -> None:
        inputs = (self.inputs,) if isinstance(self.inputs, str) else tuple(self.inputs)
        object.__setattr__(self, "inputs", inputs)
        unknown = [k for k in inputs if k not in INPUT_KINDS]
        if unknown or not inputs:
            raise WorkbenchError(f"Unknown input kind(s) {unknown}; choose from {', '.join(INPUT_KINDS)}.")
        if self.definition is not None:
            Definition.parse(self.definition)  # refused here, before any model or text is read

    @property
    def needs_calibration(self) -> bool:
        """Whether the definition needs thresholds (the default definitions never do)."""
        return self.definition is not None and Definition.parse(self.definition).needs_calibration

    def spec(self, handle: ModelHandle) -> Definition:
        return Definition.parse(self.definition or default_definition(handle))


def sparsity_source(
    settings: SparsitySettings,
    corpus: str | None = None,
    text: list[str] | None = None,
    calibration: list[str] | str | None = None,
) -> CalibrationSource | None:
    """Where the thresholds and the `train` inputs come from, for a run on `corpus` or `text` files
    (`calibration`: NAME[:SPLIT] or files); None when neither is wanted. Refuses `text` without `calibration`.
    """
    if not (settings.needs_calibration or "train" in settings.inputs):
        return None
    purpose = f"{settings.definition}'s thresholds" if settings.needs_calibration else "--inputs train"
    return calibration_source(corpus, text, calibration, purpose)


def sparsity_inputs(
    handle: ModelHandle,
    settings: SparsitySettings,
    *,
    heldout: TokenWindows | None = None,
    source: CalibrationSource | None = None,
    n_tokens: int | None = None,
    context: int | None = None,
) -> dict[str, TokenWindows]:
    """The windows of each input kind of `settings.inputs`, in order.

    heldout: `heldout` as given; random: `n_tokens` of uniformly random token ids in whole `context`
    windows; train: `n_tokens` of `source` in whole `context` windows. Both drawn with `settings.seed`;
    `n_tokens` and `context` default to those of `heldout`.
    """
    if heldout is not None:
        n_tokens = heldout.n_tokens if n_tokens is None else n_tokens
        context = heldout.context if context is None else context
    if n_tokens is None or context is None:
        raise WorkbenchError("sparsity_inputs needs the held-out windows, or n_tokens and context.")
    check_context(handle, context)  # every input kind, random included, is refused alike
    out = {}
    for kind in settings.inputs:
        if kind == "heldout":
            if heldout is None:
                raise WorkbenchError("The heldout input kind needs the measured windows (heldout=...).")
            out[kind] = heldout
        elif kind == "random":
            out[kind] = random_windows(handle.facts.d_vocab, n_tokens, context, settings.seed)
        else:
            if source is None:
                raise WorkbenchError("The train input kind needs a calibration source (source=...).")
            out[kind] = calibration_windows(handle, source, context, n_tokens, seed=settings.seed)
    return out


def run_sparsity(
    handle: ModelHandle,
    windows: TokenWindows | Mapping[str, TokenWindows],
    settings: SparsitySettings = SparsitySettings(),
    *,
    calibration: CalibrationSource | TokenWindows | None = None,
    progress: bool = True,
    workers: Workers | None = None,
) -> SparsityResult:
    """Density statistics for each input kind; the first kind gives the per-layer table and histograms.

    `windows`: the measured text (the `heldout` kind; the other kinds of `settings.inputs` are then built
    in windows of its shape by `sparsity_inputs`), or the windows of every kind by name (`sparsity_inputs`).
    `calibration`: the thresholds' calibration windows as they are, or a `CalibrationSource` from which
    `settings.calibration_tokens` are drawn with seed + 1 (it also gives the `train` inputs); by default
    the train split of the measured windows' corpus (`workbench.calibration`).
    `workers`: fold each input kind on Ray workers (`workbench.scale`), merged to the same numbers.
    """
    spec = settings.spec(handle)
    purpose = f"{spec.name}'s thresholds" if spec.needs_calibration else "--inputs train"
    source = calibration if isinstance(calibration, CalibrationSource) else None
    if isinstance(windows, TokenWindows):
        if "heldout" not in settings.inputs:
            raise WorkbenchError(
                "Give the windows of each input kind by name (sparsity_inputs) when heldout is not measured."
            )
        if "train" in settings.inputs and source is None:
            source = source_of(windows, purpose)
        windows = sparsity_inputs(handle, settings, heldout=windows, source=source)
    missing = [k for k in settings.inputs if k not in windows]
    if missing:
        raise WorkbenchError(f"No windows for the input kind(s) {missing} of the settings.")
    inputs = {kind: windows[kind] for kind in settings.inputs}
    main_windows = next(iter(inputs.values()))
    calibration_tokens = 0
    if spec.needs_calibration:  # thresholds come from the train split, never from the measured text
        if not isinstance(calibration, TokenWindows):
            source = source or source_of(main_windows, purpose)
            calibration = sparsity_calibration(
                handle, source, main_windows.context, settings.calibration_tokens, settings.seed
            )
            calibration_tokens = settings.calibration_tokens
        else:
            calibration_tokens = calibration.n_tokens
    else:
        calibration = None
    by_input, main = {}, None
    for kind, kind_windows in inputs.items():
        reducer = measure(
            handle,
            kind_windows,
            spec,
            calibration,
            batch_size=settings.batch_size,
            progress=progress,
            workers=workers,
        )
        by_input[kind] = input_density(reducer, settings.dense_threshold)
        main = main or reducer
    train = inputs["train"].slice_info if "train" in inputs else None
    return sparsity_result(
        handle, spec, settings, main, main_windows, by_input, calibration, calibration_tokens, train
    )


def input_density(reducer: DensityReducer, dense_threshold: float) -> dict[str, Any]:
    """One input kind's entry of `SparsityResult.by_input`: tokens and mean density, overall and per layer."""
    rows = reducer.layer_stats(dense_threshold)
    return {
        "tokens": reducer.tokens,
        "density_mean": mean_over_layers(rows),
        "layers": [r["density_mean"] for r in rows],
    }


def sparsity_result(
    handle: ModelHandle,
    spec: Definition,
    settings: SparsitySettings,
    reducer: DensityReducer,
    windows: TokenWindows,
    by_input: dict[str, dict[str, Any]],
    calibration: TokenWindows | None,
    calibration_tokens: int,
    train_inputs: dict[str, Any] | None = None,
) -> SparsityResult:
    """The result of the `reducer` folded over the measured `windows`, with the definition, data and
    settings that produced it; `run_sparsity` and the sparsity explorer both build theirs here."""
    rows = reducer.layer_stats(settings.dense_threshold)
    by_domain = {
        d: (reducer.domain_active[:, i] / max(1, int(reducer.domain_tokens[i])) / reducer.d_mlp).tolist()
        for i, d in enumerate(windows.domains)
        if reducer.domain_tokens[i] > 0
    }
    provenance = Provenance(
        model=handle.facts.to_dict(),
        data=windows.slice_info,
        definition=spec.describe(handle.facts.gated_mlp),
        settings={
            "inputs": list(settings.inputs),
            "calibration_tokens": calibration_tokens,
            "calibration": calibration.slice_info if calibration else None,
            "train_inputs": train_inputs,
            "dense_threshold": settings.dense_threshold,
            "batch_size": settings.batch_size,
        },
        seed=settings.seed,
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
