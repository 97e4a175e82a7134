"""`workbench finercut`: greedy sublayer removal, least harm first (replaying from each sublayer's layer)."""

from __future__ import annotations

import argparse

from workbench.commands.flags import (
    WINDOWS,
    calibration_flag,
    load_inputs,
    optional_run,
    positive_int,
    record,
)

TOKENS = (
    f"{WINDOWS}, on which the loss after each removal is reported (removals are chosen on "
    "--calibration-tokens)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(tokens=1024)
    parser.add_argument(
        "--max-share", type=float, default=0.5, help="stop when this share of the sublayers is removed"
    )
    parser.add_argument(
        "--calibration-tokens",
        type=positive_int,
        default=256,
        help="training-split tokens on which each candidate's KL is measured",
    )
    calibration_flag(parser, "the tokens on which each candidate's KL is measured")


def run(args: argparse.Namespace) -> dict:
    from workbench.calibration import calibration_source
    from workbench.replay.finercut import finercut_calibration, greedy_removal

    source = calibration_source(args.corpus, args.text, args.calibration, "finercut's removal choices")
    with optional_run(args, "finercut") as folder:
        handle, windows = load_inputs(args)
        calibration = finercut_calibration(handle, source, args.context, args.calibration_tokens, args.seed)
        data = {"heldout": windows.slice_info, "calibration": calibration.slice_info}
        result = greedy_removal(
            handle,
            calibration.tokens,
            windows.tokens,
            args.max_share,
            progress=not args.json,
            batch_size=args.batch_size,
            data=data,
        )
        record(args, folder, [result])
    if not args.json:
        print(result.table().round(4).to_string(index=False))
    return {
        "model": result.model,
        "base_loss": result.base_loss,
        "steps": result.steps,
        "seconds": round(result.seconds, 2),
    }
