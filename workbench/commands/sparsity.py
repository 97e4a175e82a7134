"""`workbench sparsity`: lazy-neuron activation density per layer, input kind and domain."""

from __future__ import annotations

import argparse

from workbench.commands.flags import calibration_flag, default_model, optional_run, positive_int, record

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
        default="heldout",
        help="comma list of heldout (the text), train (the --calibration source: the train split of "
        "--corpus by default), random (uniformly random token ids)",
    )
    parser.add_argument(
        "--calibration-tokens",
        type=positive_int,
        default=2048,
        help="train-split tokens for magnitude@P and cett@R thresholds (rounded up to whole windows)",
    )
    calibration_flag(parser, "the thresholds of magnitude@P and cett@R, and --inputs train")


def run(args: argparse.Namespace) -> dict:
    from workbench.calibration import calibration_source
    from workbench.models import load_model
    from workbench.sparsity import Definition
    from workbench.sparsity_result import run_sparsity

    calibrated = args.definition and Definition.parse(args.definition).needs_calibration
    if calibrated or "train" in args.inputs.split(","):  # refused here, before any run folder is made
        calibration_source(args.corpus, args.text, args.calibration, "sparsity's calibration")
    with optional_run(args, "sparsity") as folder:
        handle = load_model(args.model or default_model(progress=True), device=args.device)
        result = run_sparsity(
            handle,
            args.definition,
            args.inputs.split(","),
            args.tokens,
            args.context,
            args.batch_size,
            args.seed,
            corpus=args.corpus,
            text=args.text,
            calibration_tokens=args.calibration_tokens,
            calibration_data=args.calibration,
        )
        record(args, folder, [result])
    if not args.json:
        print(result.table().to_string(index=False))
        print({kind: round(body["density_mean"], 4) for kind, body in result.by_input.items()})
    keep = ("model", "definition", "tokens", "density_mean", "layers", "by_input", "by_domain", "provenance")
    return {k: v for k, v in result.to_dict().items() if k in keep}
