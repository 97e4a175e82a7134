"""`workbench sparsity`: lazy-neuron activation density per layer, input kind and domain."""

from __future__ import annotations

import argparse

from workbench.commands.flags import (
    calibration_flag,
    load_handle,
    optional_run,
    positive_int,
    record,
    text_windows,
    workers_flags,
    workers_of,
)
from workbench.sparsity import defaults

TOKENS = (
    "N tokens for each input kind, rounded up to whole --context windows: windows of the text (heldout) or "
    "of the train split (train) chosen at random with --seed, all of them if it holds fewer; random token "
    "ids (random) drawn with --seed"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--definition",
        help="when a neuron counts as active: exact_zero (ReLU default), positive (others' default), "
        "magnitude@P, cett@R or topk@K (docs/methods.md, 'Activation sparsity')",
    )
    parser.add_argument(
        "--inputs",
        default=",".join(defaults.INPUTS),
        help="comma list of heldout (the text), train (the --calibration source: the train split of "
        "--corpus by default), random (uniformly random token ids)",
    )
    parser.add_argument(
        "--calibration-tokens",
        type=positive_int,
        default=defaults.CALIBRATION_TOKENS,
        help="train-split tokens for magnitude@P and cett@R thresholds (rounded up to whole windows)",
    )
    calibration_flag(parser, "the thresholds of magnitude@P and cett@R, and --inputs train")
    workers_flags(parser, "fold the density statistics")


def run(args: argparse.Namespace) -> dict:
    from workbench.sparsity.run import SparsitySettings, run_sparsity, sparsity_inputs, sparsity_source

    settings = SparsitySettings(
        definition=args.definition,
        inputs=tuple(args.inputs.split(",")),
        calibration_tokens=args.calibration_tokens,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    # resolved (or refused) here, before any run folder is made
    source = sparsity_source(settings, args.corpus, args.text, args.calibration)
    workers = workers_of(args)
    with optional_run(args, "sparsity") as folder:
        handle = load_handle(args)
        heldout = text_windows(args, handle) if "heldout" in settings.inputs else None
        windows = sparsity_inputs(
            handle, settings, heldout=heldout, source=source, n_tokens=args.tokens, context=args.context
        )
        result = run_sparsity(handle, windows, settings, calibration=source, workers=workers)
        record(args, folder, [result])
    if not args.json:
        print(result.table().to_string(index=False))
        print({kind: round(body["density_mean"], 4) for kind, body in result.by_input.items()})
    keep = ("model", "definition", "tokens", "density_mean", "layers", "by_input", "by_domain", "provenance")
    return {k: v for k, v in result.to_dict().items() if k in keep}
