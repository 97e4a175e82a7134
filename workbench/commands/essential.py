"""`workbench essential`: one-shot pruning sweep and essential sparsity s*."""

from __future__ import annotations

import argparse

from workbench.commands.flags import (
    WINDOWS,
    calibration_flag,
    load_inputs,
    optional_run,
    positive_int,
    record,
    sparsity_levels,
)
from workbench.essential import defaults

TOKENS = f"{WINDOWS}; every sparsity level is evaluated on the same windows"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pattern",
        help="which weights compete: global (one ranking over all matrices), layerwise (per matrix), rowwise "
        "(per output row), or N:M such as 2:4 (N kept in every M inputs, one level: 1 - N/M) "
        f"(default: {defaults.PATTERN}; {defaults.WANDA_PATTERN} with wanda)",
    )
    parser.add_argument(
        "--criterion",
        default=defaults.CRITERION,
        choices=list(defaults.CRITERIA),
        help="what is pruned first: the smallest |W|, a seeded random order, or the smallest |W| x ||X|| "
        "(Wanda: input norms over --calibration-tokens of the train split); "
        "docs/methods.md, 'Essential sparsity'",
    )
    levels = ",".join(f"{level:g}" for level in defaults.LEVELS[:2]) + f",...,{defaults.LEVELS[-1]:g}"
    parser.add_argument(
        "--levels",
        type=sparsity_levels,
        help=f"comma list of sparsities (default: {levels}; ignored for N:M patterns)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=defaults.TOLERANCE,
        help="s* is the largest sparsity whose loss is at most (1 + this) x the dense model's loss",
    )
    parser.add_argument(
        "--refine",
        type=int,
        default=defaults.REFINE,
        help="bisection steps between the last level within the tolerance and the next one",
    )
    parser.add_argument(
        "--calibration-tokens",
        type=positive_int,
        default=defaults.CALIBRATION_TOKENS,
        help="train-split tokens for wanda's input norms (rounded up to whole windows)",
    )
    calibration_flag(parser, "wanda's input norms")


def run(args: argparse.Namespace) -> dict:
    from workbench.calibration import calibration_source
    from workbench.essential.run import EssentialSettings, sweep

    settings = EssentialSettings(
        pattern=args.pattern,
        criterion=args.criterion,
        **({"levels": args.levels} if args.levels else {}),
        tolerance=args.tolerance,
        refine=args.refine,
        calibration_tokens=args.calibration_tokens,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    source = None
    if args.criterion == "wanda":  # resolved (or refused) before any run folder is made
        source = calibration_source(args.corpus, args.text, args.calibration, "wanda's input norms")
    with optional_run(args, "essential") as folder:
        handle, windows = load_inputs(args)
        result = sweep(handle, windows, settings, calibration=source)
        record(args, folder, [result])
    if not args.json:
        print(result.table().to_string(index=False))
        print(f"essential sparsity s* = {result.essential_sparsity:.4f}, knee = {result.knee}")
        if result.note:
            print(f"note: {result.note}")
    return {k: v for k, v in result.to_dict().items() if k != "kind"}
