"""`workbench moefy`: split dense MLPs into experts and measure what the top k carry."""

from __future__ import annotations

import argparse

from workbench.commands.flags import calibration_flag, load_inputs, optional_run, positive_int, record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--experts", type=positive_int, required=True, help="groups (experts) per MLP")
    parser.add_argument(
        "--k", type=positive_int, default=2, help="groups kept per token for the routing stats"
    )
    parser.add_argument(
        "--method",
        default="kmeans",
        choices=["kmeans", "coactivation", "random"],
        help="how neurons are grouped: balanced k-means of their input weights, clusters of the "
        "co-activation graph on the train tokens, or a seeded random split (the chance baseline)",
    )
    parser.add_argument(
        "--train-tokens",
        type=positive_int,
        default=8192,
        help="train-split tokens for the routers (and the co-activation graph)",
    )
    calibration_flag(parser, "the routers' (and the co-activation graph's) tokens")
    parser.add_argument(
        "--labels",
        default="domain,token_class,position",
        help="comma list of the labels whose mutual information with the learned routing is reported",
    )


def run(args: argparse.Namespace) -> dict:
    from workbench.calibration import calibration_source, calibration_windows
    from workbench.experts.moefication import run_moefy

    source = calibration_source(args.corpus, args.text, args.calibration, "moefy's routers")
    with optional_run(args, "moefy") as folder:
        handle, windows = load_inputs(args)
        train = calibration_windows(handle, source, args.context, args.train_tokens, seed=args.seed + 1)
        result = run_moefy(
            handle,
            windows,
            train,
            args.experts,
            args.k,
            args.method,
            labels=tuple(x for x in args.labels.split(",") if x),
            batch_size=args.batch_size,
            seed=args.seed,
        )
        record(args, folder, [result])
    if not args.json:
        print(result.table().round(4).to_string(index=False))
    return result.compact()
