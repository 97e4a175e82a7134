"""`workbench bench replay`: (a) prefix reuse, (b) sparse vs dense MLP on the CPU torch path, (c) the
Triton kernels on a GPU (or a line saying they were skipped); (b) and (c) come from
`workbench.bench.kernels`. Every figure is a ratio against a baseline timed in the same run; medians of
interleaved repeats (timings here are noisy).
"""

from __future__ import annotations

import torch

from workbench.bench.timing import time_calls
from workbench.replay.edits import HeadMask, NeuronMask
from workbench.replay.engine import ReplayEngine, run_layers
from workbench.replay.stack import Moe

PREFIX_TARGET = 1.2  # ratio <= 1.2 × ideal at every layer
# Sparse MLP targets, as fractions of the 1/(1-s) limit: (sets, tokens, skip, shape or None = every shape)
MLP_TARGETS = {
    ("shared", 256, 0.9, None): 0.6,
    ("shared", 256, 0.97, None): 0.4,
    ("per_token", 1, 0.9, "relu-2048"): 0.3,
}


def prefix_reuse(handle, tokens: torch.Tensor, repeats: int = 5) -> dict:
    """Replay of a small neuron mask at L = n/4, n/2, 3n/4 against a full forward and the ideal.

    The edit masks 1 % of layer L's MLP neurons (one attention head on a MoE layer): it changes the
    output but hardly the work, so replay should cost what the blocks >= L cost. `ideal` is those blocks plus
    the final norm and unembedding, run unedited from the cached residual; `ratio` includes everything
    `engine.replay` does (the edit is compiled beforehand, its `apply_seconds` reported apart).
    """
    engine = ReplayEngine(handle, tokens)
    stack = engine.stack
    n = stack.n_layers
    rope = stack.rope(tokens.shape[1])
    d_mlp = handle.facts.d_mlp
    rows = []
    bridge = time_calls({"bridge": lambda: handle.logits(tokens)}, max(1, repeats // 2))["bridge"].median
    for layer in sorted({n // 4, n // 2, 3 * n // 4}):
        moe = isinstance(stack.layers[layer].mlp, Moe)
        plan = engine.compile(
            [HeadMask(layer, (0,)) if moe else NeuronMask(layer, tuple(range(0, d_mlp, 100)))]
        )

        def ideal(layer=layer):
            with torch.inference_mode():
                out = run_layers(stack, engine.base.resid[layer], layer, None, rope)
                return stack.logits(out[-1])

        fns = {"full": engine.forward, "ideal": ideal, "replay": lambda plan=plan: engine.replay(plan)}
        t = {name: timing.median for name, timing in time_calls(fns, repeats).items()}
        ratio, best = t["replay"] / t["full"], t["ideal"] / t["full"]
        rows.append(
            {
                "layer": layer,
                "ratio": round(ratio, 4),
                "ideal": round(best, 4),
                "ratio_over_ideal": round(ratio / best, 4),
                "meets_target": ratio <= PREFIX_TARGET * best,
                "full_forward_seconds": round(t["full"], 5),
                "replay_seconds": round(t["replay"], 5),
                "apply_seconds": round(plan.apply_seconds, 5),
            }
        )
    return {
        "prefix": rows,
        "tokens": int(tokens.numel()),
        "full_forward_vs_bridge_forward": round(rows[0]["full_forward_seconds"] / bridge, 4),
        "bridge_forward_seconds": round(bridge, 5),
        "target": f"ratio <= {PREFIX_TARGET} x ideal at every layer",
    }


def bench_replay(handle, windows, batch_size: int = 4, repeats: int = 5, **_: object) -> dict:
    """All three parts of the replay benchmark in one run."""
    from workbench.bench.kernels import sparse_mlp_benchmark, triton_benchmark

    tokens = windows.tokens[:batch_size]
    body = {"model": handle.name, **prefix_reuse(handle, tokens, repeats)}
    body["sparse_mlp"] = [_with_target(row) for row in sparse_mlp_benchmark()]
    body["triton"] = triton_benchmark()
    return body


def _with_target(row: dict) -> dict:
    """The row, plus its target fraction of the limit and whether it is met, where MLP_TARGETS sets one."""
    for (sets, tokens, skip, shape), fraction in MLP_TARGETS.items():
        if (row["sets"], row["tokens"], row["skip"]) == (sets, tokens, skip) and shape in (
            None,
            row["shape"],
        ):
            return row | {"target_fraction": fraction, "meets_target": row["fraction_of_limit"] >= fraction}
    return row
