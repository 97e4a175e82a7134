"""Essential sparsity (docs/methods.md#essential-sparsity): one-shot pruning sweeps, no retraining.

One ordering per pattern (`PruningPlan`), a mask per level derived from it, the weights zeroed in
place for one evaluation and restored bitwise after it: no reload, no re-sort. s* is the largest
sparsity whose held-out loss stays within `tolerance` (relative) of the dense model, refined by
bisection between the last grid level that passes and the first that fails (ours;
docs/methods.md#sweep-and-threshold). Weights are pruned as stored in the checkpoint (not folded).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import altair as alt
import pandas as pd
import torch

from workbench import essential_defaults as defaults
from workbench.errors import WorkbenchError
from workbench.evaluate import evaluate
from workbench.pruning import PruningPlan, prunable_matrices, pruned, scores
from workbench.results import Provenance, Result, register_result

DEFAULT_LEVELS = defaults.LEVELS
INPUT_HOOKS = {  # where each matrix kind reads its input, for Wanda's ‖X_j‖
    "attn_q": "ln1.hook_out",
    "attn_k": "ln1.hook_out",
    "attn_v": "ln1.hook_out",
    "attn_qkv": "ln1.hook_out",
    "attn_o": "attn.o.hook_in",
    "mlp_in": "ln2.hook_out",
    "mlp_gate": "ln2.hook_out",
    "mlp_out": "mlp.out.hook_in",
}


class SquareSumReducer:
    """Σ_t x_t² per input feature of each hook (for ‖X_j‖₂ over calibration tokens)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}

    def update(self, values: dict[str, torch.Tensor], meta: dict[str, torch.Tensor]) -> None:
        for name, value in values.items():
            flat = value.double().reshape(value.shape[0], -1)
            self.sums[name] = self.sums.get(name, 0) + (flat**2).sum(0)


def wanda_norms(handle, matrices, calibration, batch_size: int = 8) -> dict[str, torch.Tensor]:
    """‖X_j‖₂ over calibration tokens for every matrix's input features (Wanda's activation norms)."""
    from workbench.probes.capture import ActivationProbe, ReducerSink, capture

    if any("[" in m.name for m in matrices):
        raise WorkbenchError("Wanda scores for MoE experts need per-expert routed inputs; not supported yet.")
    hooks = {m.name: f"blocks.{m.layer}.{INPUT_HOOKS[m.kind]}" for m in matrices}
    reducer = SquareSumReducer()
    capture(
        handle,
        calibration,
        [ActivationProbe(sorted(set(hooks.values())))],
        ReducerSink([reducer]),
        batch_size=batch_size,
        progress=False,
    )
    norms = {}
    for m in matrices:
        norm = reducer.sums[hooks[m.name]].sqrt().float()
        if norm.numel() != m.shape[m.in_dim]:
            raise WorkbenchError(
                f"{hooks[m.name]} has {norm.numel()} features; {m.name} reads {m.shape[m.in_dim]}."
            )
        norms[m.name] = norm
    return norms


def knee(curve: list[dict]) -> float | None:
    """The sparsity with the largest second difference of loss over the (sorted) levels."""
    points = sorted((p["sparsity"], p["loss"]) for p in curve)
    if len(points) < 3:
        return None
    second = [points[i - 1][1] - 2 * points[i][1] + points[i + 1][1] for i in range(1, len(points) - 1)]
    return points[1 + max(range(len(second)), key=second.__getitem__)][0]


def explain(
    curve: list[dict], tolerance: float, s_star: float, pattern: str, fixed_sparsity: float | None = None
) -> str:
    """Why s* and the knee came out as they did, in words, where the numbers alone would puzzle.

    Said: an N:M pattern's single level; s* = 0 (the first level above 0 already exceeds the tolerance);
    s* at the largest level tried (the sweep did not reach the drop); a null knee (fewer than 3 levels).
    Empty otherwise: s* then lies between a level within the tolerance and a larger one beyond it.
    """
    points = sorted(curve, key=lambda p: p["sparsity"])
    dense = points[0]["loss"]
    tried = [p for p in points if p["sparsity"] > 0]

    def rise(p: dict) -> str:
        return f"loss {p['loss']:.4f} ({p['loss'] / dense - 1:+.2%} over the dense {dense:.4f})"

    notes = []
    if fixed_sparsity is not None:
        notes.append(
            f"The {pattern} pattern has only one sparsity level, 1 - N/M = {fixed_sparsity:g}: the sweep "
            "evaluates the dense model and that level, with no grid and no bisection."
        )
    if not tried:
        notes.append("No sparsity above 0 was evaluated, so s* = 0.")
    elif s_star == 0.0:
        first = tried[0]
        which = "that level" if fixed_sparsity is not None else "the smallest level tried"
        notes.append(
            f"At {which}, {first['sparsity']:g}, the {rise(first)} exceeds the tolerance of "
            f"{tolerance:.2%}, and no level tried above 0 keeps the loss within it, so s* = 0."
        )
    elif s_star == tried[-1]["sparsity"]:
        last = tried[-1]
        tail = (
            "the pattern's only level"
            if fixed_sparsity is not None
            else "a lower bound: none larger was tried"
        )
        notes.append(
            f"The largest level tried, {s_star:g}, keeps the {rise(last)} within the tolerance of "
            f"{tolerance:.2%}, so s* = {s_star:g}, {tail}."
        )
    if len(points) < 3:
        notes.append(f"The knee needs at least 3 levels and the sweep has {len(points)}, so it is null.")
    return " ".join(notes)


@register_result
@dataclass(kw_only=True)
class EssentialResult(Result):
    kind = "essential_sparsity"
    title = "Essential sparsity (one-shot pruning)"

    model: str
    pattern: str
    criterion: str
    tolerance: float
    essential_sparsity: float
    knee: float | None
    curve: list[dict]
    provenance: Provenance
    timing: dict = field(default_factory=dict)
    note: str = ""  # why s* and the knee are what they are, when the numbers alone would puzzle (`explain`)

    def table(self) -> pd.DataFrame:
        rows = [{k: p[k] for k in ("sparsity", "loss", "perplexity", "accuracy")} for p in self.curve]
        return pd.DataFrame(rows).assign(pattern=self.pattern, criterion=self.criterion)

    def charts(self) -> dict[str, alt.Chart]:
        data = self.table()
        line = (
            alt.Chart(data, width=340, height=200)
            .mark_line(point=True)
            .encode(
                x=alt.X("sparsity:Q"),
                y=alt.Y("loss:Q", title="held-out loss (nats/token)"),
                tooltip=["sparsity", "loss", "perplexity", "accuracy"],
            )
        )
        rule = (
            alt.Chart(pd.DataFrame([{"s*": self.essential_sparsity}]))
            .mark_rule(strokeDash=[4, 3])
            .encode(x="s*:Q")
        )
        title = f"{self.model}: {self.pattern} {self.criterion} pruning, s* = {self.essential_sparsity:.3f}"
        return {"pruning_curve": (line + rule).properties(title=title)}


def wanda_calibration(handle, windows, calibration, n_tokens: int, seed: int):
    """Wanda's calibration windows: given ones as they are, else drawn from a source (see `sweep`)."""
    from workbench.calibration import CalibrationSource, calibration_source, calibration_windows

    if calibration is not None and not isinstance(calibration, CalibrationSource):
        return calibration
    corpus = windows.slice_info.get("corpus")
    source = calibration or calibration_source(corpus, purpose="wanda's input norms")
    return calibration_windows(handle, source, windows.context, n_tokens, seed=seed + 1)


def sweep(
    handle,
    windows,
    pattern: str | None = None,
    criterion: str = defaults.CRITERION,
    levels=DEFAULT_LEVELS,
    tolerance: float = defaults.TOLERANCE,
    refine: int = defaults.REFINE,
    calibration=None,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
    calibration_tokens: int = defaults.CALIBRATION_TOKENS,
) -> EssentialResult:
    """Evaluate the model pruned at each level (plus bisection steps) and find s* and the knee.

    `pattern` defaults to rowwise for Wanda and global otherwise (`essential_defaults.default_pattern`).
    Wanda's input norms come from `calibration`: token windows, or a `CalibrationSource` of which
    `calibration_tokens` in windows of the evaluated length are drawn with seed + 1; without it, the
    train split of the evaluated corpus (`workbench.calibration`).
    """
    t0 = time.perf_counter()
    pattern = pattern or defaults.default_pattern(criterion)
    if criterion == "wanda":
        calibration = wanda_calibration(handle, windows, calibration, calibration_tokens, seed)
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

    def at(level: float) -> dict:
        nonlocal eval_seconds
        if level not in results:
            t = time.perf_counter()
            with pruned(matrices, plan.masks(level)):
                r = evaluate(handle, windows, batch_size=batch_size, progress=progress)
            eval_seconds += time.perf_counter() - t
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
        for _ in range(refine):
            mid = round((low + high) / 2, 6)
            low, high = (mid, high) if at(mid)["loss"] <= limit else (low, mid)
        best = low
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
            "refine": refine,
            "tolerance": tolerance,
            "batch_size": batch_size,
            "n_weights": sum(m.numel() for m in matrices),
            "n_matrices": len(matrices),
            "calibration": calibration.slice_info if calibration is not None else None,
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
