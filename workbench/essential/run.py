"""Essential sparsity (docs/methods.md#essential-sparsity): one-shot pruning sweeps, no retraining.

One ordering per pattern (`pruning.PruningPlan`), a mask per level derived from it, the weights zeroed in
place for one evaluation and restored bitwise after it: no reload, no re-sort. s* is the largest
sparsity whose held-out loss stays within `tolerance` (relative) of the dense model, refined by
bisection between the last grid level that passes and the first that fails (ours;
docs/methods.md#sweep-and-threshold). Weights are pruned as stored in the checkpoint (not folded).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from workbench.errors import WorkbenchError
from workbench.essential import defaults
from workbench.essential.pruning import PruningPlan, prunable_matrices, pruned, scores
from workbench.essential.result import EssentialResult, explain, knee
from workbench.essential.wanda import wanda_calibration, wanda_norms
from workbench.evaluate import evaluate
from workbench.progress import Bar
from workbench.results import Provenance
from workbench.settings import Settings


@dataclass(frozen=True, kw_only=True)
class EssentialSettings(Settings):
    """What a sweep prunes and how s* is found; the defaults come from `essential/defaults.py`."""

    pattern: str | None = None  # None: rowwise for wanda, global otherwise (`defaults.default_pattern`)
    criterion: str = defaults.CRITERION
    levels: tuple[float, ...] = defaults.LEVELS  # ignored for N:M patterns (one level, 1 - N/M)
    tolerance: float = defaults.TOLERANCE
    refine: int = defaults.REFINE
    calibration_tokens: int = defaults.CALIBRATION_TOKENS  # wanda's calibration tokens, drawn with seed + 1
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", tuple(self.levels))

    @property
    def resolved_pattern(self) -> str:
        return self.pattern or defaults.default_pattern(self.criterion)


def sweep(
    handle,
    windows,
    settings: EssentialSettings = EssentialSettings(),
    *,
    calibration=None,
    progress: bool = True,
) -> EssentialResult:
    """Evaluate the model pruned at each level (plus bisection steps) and find s* and the knee.

    Wanda's input norms come from `calibration`: token windows as they are, or a `CalibrationSource` of
    which `settings.calibration_tokens` in windows of the evaluated length are drawn with seed + 1
    (`wanda.wanda_calibration`); without it, the train split of the evaluated corpus
    (`workbench.calibration`).
    """
    t0 = time.perf_counter()
    pattern, criterion, seed = settings.resolved_pattern, settings.criterion, settings.seed
    levels, tolerance, batch_size = settings.levels, settings.tolerance, settings.batch_size
    if criterion == "wanda":
        calibration = wanda_calibration(handle, windows, calibration, settings.calibration_tokens, seed)
    matrices = prunable_matrices(handle)
    norms = wanda_norms(handle, matrices, calibration, batch_size) if criterion == "wanda" else None
    if criterion == "wanda" and calibration is None:
        raise WorkbenchError("wanda needs calibration windows for its activation norms.")
    plan = PruningPlan.build(matrices, scores(matrices, criterion, seed=seed, input_norms=norms), pattern)
    if plan.fixed_sparsity is not None:
        levels = (0.0, plan.fixed_sparsity)
    setup_seconds = time.perf_counter() - t0
    eval_seconds = 0.0
    results: dict[float, dict] = {}
    # the levels evaluated so far, for progress.json only (each evaluation draws its own terminal bar);
    # the total is an upper bound until the bisection ends: every grid level, then `refine` steps
    refine = max(0, settings.refine) if plan.fixed_sparsity is None else 0
    bar = Bar(len({0.0, *levels}) + refine, unit="levels", desc="essential sweep", show=False)

    def at(level: float) -> dict:
        nonlocal eval_seconds
        if level not in results:
            t = time.perf_counter()
            with pruned(matrices, plan.masks(level)):
                r = evaluate(handle, windows, batch_size=batch_size, progress=progress)
            eval_seconds += time.perf_counter() - t
            bar.update(1)
            results[level] = {
                "sparsity": level,
                "loss": r.loss,
                "perplexity": r.perplexity,
                "accuracy": r.accuracy,
                "pruned_weights": plan.n_pruned(level),
                "by_domain": {d: vars(s) for d, s in r.by_domain.items()},
            }
        return results[level]

    dense = at(0.0)["loss"]
    limit = dense * (1 + tolerance)
    ordered = sorted(set(levels))
    passing = [s for s in ordered if at(s)["loss"] <= limit]
    best = max(passing) if passing else 0.0
    failing = [s for s in ordered if s > best]
    if failing and plan.fixed_sparsity is None:
        low, high = best, min(failing)
        for _ in range(settings.refine):
            mid = round((low + high) / 2, 6)
            low, high = (mid, high) if at(mid)["loss"] <= limit else (low, mid)
        best = low
    bar.set_total(len(results))
    bar.close()
    curve = [results[s] for s in sorted(results)]
    provenance = Provenance(
        model=handle.facts.to_dict(),
        data=windows.slice_info,
        seed=seed,
        definition=f"one-shot {pattern} {criterion} pruning of attention Q,K,V,O and MLP in/gate/out in "
        "every "
        "block (no embeddings, unembedding, norms, biases or routers), weights as released, no retraining; "
        f"s* = largest sparsity with held-out loss <= (1 + {tolerance}) x dense loss, refined by bisection; "
        "knee = largest second difference of loss",
        settings={
            "levels": list(ordered),
            "refine": settings.refine,
            "tolerance": tolerance,
            "batch_size": batch_size,
            "n_weights": sum(m.numel() for m in matrices),
            "n_matrices": len(matrices),
            "calibration": getattr(calibration, "slice_info", None),  # wanda's calibration windows
        },
    )
    timing = {
        "setup_seconds": setup_seconds,
        "eval_seconds": eval_seconds,
        "evaluations": len(results),
        "total_seconds": time.perf_counter() - t0,
    }
    note = explain(curve, tolerance, best, pattern, plan.fixed_sparsity)
    return EssentialResult(
        model=handle.name,
        pattern=pattern,
        criterion=criterion,
        tolerance=tolerance,
        essential_sparsity=best,
        knee=knee(curve),
        curve=curve,
        provenance=provenance,
        timing=timing,
        note=note,
    )
