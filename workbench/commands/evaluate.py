"""`workbench evaluate`: held-out loss, perplexity and accuracy, per domain."""

from __future__ import annotations

import argparse

from workbench.commands.flags import load_inputs, optional_run, record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> dict:
    from workbench.report import foundation_results

    with optional_run(args, "evaluate") as folder:
        handle, windows = load_inputs(args)
        results = foundation_results(handle, windows, batch_size=args.batch_size, seed=args.seed)
        record(args, folder, results)
    evaluation = results[-1]
    if not args.json:
        print(evaluation.table().to_string(index=False))
    return {k: v for k, v in evaluation.to_dict().items() if k not in ("kind", "loss_histogram")}
