"""`workbench experts`: MoE routing balance, specialization and expert masking."""

from __future__ import annotations

import argparse

from workbench.commands.flags import load_inputs, optional_run, record, workers_flags, workers_of
from workbench.experts import defaults


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--labels",
        default=",".join(defaults.LABELS),
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
    workers_flags(parser, "fold the routing statistics")


def run(args: argparse.Namespace) -> dict:
    from workbench.experts.causal import masking_table
    from workbench.experts.specialization import ExpertsSettings, run_experts

    labels = tuple(x for x in args.labels.split(",") if x)
    settings = ExpertsSettings(
        labels=labels, baseline=args.baseline, batch_size=args.batch_size, seed=args.seed
    )
    workers = workers_of(args)
    with optional_run(args, "experts") as folder:
        handle, windows = load_inputs(args)
        result = run_experts(handle, windows, settings, workers=workers)
        results = [result]
        if args.mask:
            results.append(
                masking_table(
                    handle, windows, args.mask, args.mask_layers, batch_size=args.batch_size, seed=args.seed
                )
            )
        record(args, folder, results)
    if not args.json:
        print(result.table().round(4).to_string(index=False))
        if args.mask:
            print(results[1].table().round(4).to_string(index=False))
    body = result.compact()
    if args.mask:
        masking = results[1]
        body["masking"] = {"mode": masking.mode, "base_loss": masking.base_loss, "rows": masking.rows}
    return body
