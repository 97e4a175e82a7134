"""`workbench bench essential`: a pruning sweep's cost over (its evaluations × one evaluation pass)."""

from __future__ import annotations

import torch

from workbench.bench.timing import stopwatch, time_calls


def bench_essential(handle, windows, batch_size: int = 4, progress: bool = False, repeats: int = 2) -> dict:
    """A global magnitude sweep's wall time over (its evaluations × one plain evaluation pass).

    One evaluation pass is the fastest of `repeats` after a warm-up; the sweep runs once.
    """
    from workbench.essential.run import EssentialSettings, sweep
    from workbench.evaluate import evaluate

    one_eval = time_calls(
        {"evaluate": lambda: evaluate(handle, windows, batch_size=batch_size, progress=False)}, repeats
    )["evaluate"].best
    settings = EssentialSettings(pattern="global", criterion="magnitude", batch_size=batch_size)
    with stopwatch() as watch:
        result = sweep(handle, windows, settings, progress=progress)
    evaluations = result.timing["evaluations"]
    return {
        "model": handle.name,
        "tokens": windows.n_tokens,
        "evaluations": evaluations,
        "one_evaluation_seconds": one_eval,
        "sweep_seconds": watch.seconds,
        "setup_seconds": result.timing["setup_seconds"],
        "sweep_over_evals": watch.seconds / (evaluations * one_eval),
        "essential_sparsity": result.essential_sparsity,
        "threads": torch.get_num_threads(),
    }
