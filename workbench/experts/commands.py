"""The `experts` and `moefy` commands (registered in workbench.cli, imported when first run)."""

from __future__ import annotations

import argparse

from workbench.cli import calibration_flag, load_inputs, optional_run, positive_int, record


def cmd_experts(args: argparse.Namespace) -> dict:
    from workbench.experts.causal import masking_table
    from workbench.experts.specialization import run_experts

    labels = [x for x in args.labels.split(",") if x]
    with optional_run(args, "experts") as run:
        handle, windows = load_inputs(args)
        result = run_experts(
            handle, windows, labels, batch_size=args.batch_size, seed=args.seed, baseline=args.baseline
        )
        results = [result]
        if args.mask:
            results.append(
                masking_table(
                    handle, windows, args.mask, args.mask_layers, batch_size=args.batch_size, seed=args.seed
                )
            )
        record(args, run, results)
    if not args.json:
        print(result.table().round(4).to_string(index=False))
        if args.mask:
            print(results[1].table().round(4).to_string(index=False))
    body = result.compact()
    if args.mask:
        masking = results[1]
        body["masking"] = {"mode": masking.mode, "base_loss": masking.base_loss, "rows": masking.rows}
    return body


def experts_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--labels",
        default="domain,token_class,position,token",
        help="comma list of domain, token_class, position, token (the last gives top tokens per expert)",
    )
    parser.add_argument(
        "--baseline", action="store_true", help="also measure a randomly initialised copy of the model"
    )
    parser.add_argument(
        "--mask",
        choices=["reroute", "drop"],
        help="also mask each expert in turn and report the loss increase per (layer, expert, domain)",
    )
    parser.add_argument(
        "--mask-layers", type=int, nargs="+", help="with --mask: only these layers (default: every layer)"
    )


def cmd_moefy(args: argparse.Namespace) -> dict:
    from workbench.calibration import calibration_source, calibration_windows
    from workbench.experts.moefication import run_moefy

    source = calibration_source(args.corpus, args.text, args.calibration, "moefy's routers")
    with optional_run(args, "moefy") as run:
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
        record(args, run, [result])
    if not args.json:
        print(result.table().round(4).to_string(index=False))
    return result.compact()


def moefy_flags(parser: argparse.ArgumentParser) -> None:
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
