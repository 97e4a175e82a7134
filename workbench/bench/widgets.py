"""`workbench bench widgets`: how long the edit explorer takes to redraw after a control moves.

It drives the widget's Python side as a user would: set a control, wait for the result. The widget
records, per update, the seconds from the control change until the metrics are shown (and until the
charts are drawn too). Each figure is compared with a plain forward of the same tokens timed in the same
run (the workbench's tensor stack, and the model's own forward), and last-third edits with the replay's
ideal share: the blocks from L on plus the unembedding, as in `bench replay`.

Scenarios, on the first window (128 tokens by default, SmolLM2-135M):
- `last_third`: top-k on the MLP of layer ⌈2n/3⌉ (the earliest layer of the last third: the slowest),
  k moved through `repeats` values, each a new edit;
- `layer0`: the same at layer 0;
- `prune`: the weight-pruning slider: the first level pays the ranking (reported apart), then each move.
"""

from __future__ import annotations

import math

import torch

from workbench.bench.timing import Timing, time_calls
from workbench.replay.engine import run_layers
from workbench.replay.session import ReplaySession

TARGETS = {"last_third": 0.3, "layer0": 1.0, "prune": 1.0}  # seconds until the metrics show
IDEAL_TARGET = 1.2  # last-third: update / forward <= 1.2 × ideal share


def _updates(explorer, moves) -> list[dict]:
    """Apply each move (a function that sets controls), wait for the widget, return its update records."""
    records = []
    for move in moves:
        move()
        explorer.wait()
        if explorer.error:
            raise RuntimeError(f"the widget refused a benchmark edit: {explorer.error}")
        records.append(explorer.updates[-1])
    return records


def _summary(records: list[dict], forward: float, target: float) -> dict:
    metrics = Timing(seconds=[r["metrics_seconds"] for r in records]).median
    drawn = Timing(seconds=[r["drawn_seconds"] for r in records]).median
    replay = Timing(seconds=[r["replay_seconds"] for r in records]).median
    return {
        "updates": len(records),
        "first_layer": records[-1]["first_layer"],
        "metrics_seconds": round(metrics, 4),
        "drawn_seconds": round(drawn, 4),
        "replay_seconds": round(replay, 4),
        "ratio_to_forward": round(metrics / forward, 4),
        "each_metrics_seconds": [round(r["metrics_seconds"], 4) for r in records],
        "target_seconds": target,
        "meets_target": metrics <= target,
    }


def bench_widgets(handle, windows, repeats: int = 7, context: int = 128, **_: object) -> dict:
    """The edit explorer's update latency for edits at the last third and at layer 0, and the pruning
    slider, against a plain forward of the same tokens."""
    from workbench.widgets.edit_explorer import EditExplorer

    tokens = windows.tokens[:1, :context]
    session = ReplaySession(handle, tokens, {"tokens": int(tokens.numel()), **windows.slice_info})
    explorer = EditExplorer(session)
    explorer.wait()
    engine, stack = session.engine, session.engine.stack
    n = stack.n_layers
    last_third = math.ceil(2 * n / 3)
    rope = stack.rope(tokens.shape[1])

    def ideal():
        with torch.inference_mode():
            return stack.logits(run_layers(stack, engine.base.resid[last_third], last_third, None, rope)[-1])

    base = time_calls(
        {"forward": engine.forward, "model_forward": lambda: handle.logits(tokens), "ideal": ideal}, repeats
    )
    forward = base["forward"].median
    share = base["ideal"].median / forward
    d_mlp = handle.facts.d_mlp
    ks = [max(1, d_mlp * (i + 1) // (repeats + 2)) for i in range(repeats)]

    def topk_moves(layer: int):
        def set_layer():
            explorer.neuron_layers.value = (layer, layer)
            explorer.neuron_mode.value = "topk"

        yield set_layer
        for k in ks:
            yield lambda k=k: setattr(explorer.neuron_k, "value", k)

    rows = {}
    records = _updates(explorer, topk_moves(last_third))[1:]
    rows["last_third"] = _summary(records, forward, TARGETS["last_third"]) | {
        "layer": last_third,
        "ideal_share": round(share, 4),
        "ratio_over_ideal": round(
            Timing(seconds=[r["metrics_seconds"] for r in records]).median / forward / share, 4
        ),
    }
    rows["last_third"]["meets_ideal_target"] = rows["last_third"]["ratio_over_ideal"] <= IDEAL_TARGET
    rows["layer0"] = _summary(_updates(explorer, topk_moves(0))[1:], forward, TARGETS["layer0"]) | {
        "layer": 0
    }
    explorer.edits = []
    explorer.wait()
    levels = [round(0.1 * (i % 8 + 1), 2) for i in range(repeats + 1)]
    moves = [lambda s=s: setattr(explorer.prune_level, "value", s) for s in levels]
    prune = _updates(explorer, moves)
    rows["prune"] = _summary(prune[1:], forward, TARGETS["prune"]) | {
        "first_ranking_seconds": round(prune[0]["metrics_seconds"], 4),
        "pattern": explorer.prune_pattern.value,
        "criterion": explorer.prune_criterion.value,
    }
    runner = explorer._runner
    explorer.close()
    return {
        "model": handle.name,
        "tokens": int(tokens.numel()),
        "threads": torch.get_num_threads(),
        "forward_seconds": round(forward, 4),
        "model_forward_seconds": round(base["model_forward"].median, 4),
        "scenarios": rows,
        "abandoned": runner.abandoned,
        "coalesced": runner.skipped,
        "targets": {
            "last_third": f"<= {TARGETS['last_third']} s and ratio <= {IDEAL_TARGET} x the ideal share",
            "layer0": f"<= {TARGETS['layer0']} s",
            "prune": f"<= {TARGETS['prune']} s after the first ranking",
        },
        "measured": "seconds from a control change until the widget shows the new metrics (median); "
        "drawn_seconds also includes the SVG charts",
    }
