"""`workbench moefy`: split dense MLPs into experts and measure what the top k carry."""

from __future__ import annotations

import argparse

from workbench.commands.flags import calibration_flag, load_inputs, optional_run, positive_int, record
from workbench.experts import defaults


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--experts", type=positive_int, required=True, help="groups (experts) per MLP")
    parser.add_argument(
        "--k", type=positive_int, default=defaults.MOEFY_K, help="groups kept per token for the routing stats"
    )
    parser.add_argument(
        "--method",
        default=defaults.MOEFY_METHOD,
        choices=list(defaults.MOEFY_METHODS),
        help="how neurons are grouped: balanced k-means of their input weights, clusters of the "
        "co-activation graph on the train tokens, or a seeded random split (the chance baseline)",
    )
    parser.add_argument(
        "--train-tokens",
        type=positive_int,
        default=defaults.MOEFY_TRAIN_TOKENS,
        help="train-split tokens for the routers (and the co-activation graph)",
    )
    calibration_flag(parser, "the routers' (and the co-activation graph's) tokens")
    parser.add_argument(
        "--labels",
        default=",".join(defaults.MOEFY_LABELS),
        help="comma list of the labels whose mutual information with the learned routing is reported",
    )


def run(args: argparse.Namespace) -> dict:
    from workbench.calibration import calibration_source
    from workbench.experts.moefication import MoefySettings, run_moefy

    settings = MoefySettings(
        experts=args.experts,
        k=args.k,
        method=args.method,
        labels=tuple(x for x in args.labels.split(",") if x),
        train_tokens=args.train_tokens,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    source = calibration_source(args.corpus, args.text, args.calibration, "moefy's routers")
    with optional_run(args, "moefy") as folder:
        handle, windows = load_inputs(args)
        result = run_moefy(handle, windows, settings, calibration=source)
        record(args, folder, [result])
    if not args.json:
        print(result.table().round(4).to_string(index=False))
    return result.compact()
