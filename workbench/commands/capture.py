"""`workbench capture`: stream activations, attention and routing to a store."""

from __future__ import annotations

import argparse

from workbench.commands.flags import load_inputs, positive_int, workers_flags, workers_of
from workbench.errors import WorkbenchError

TOKENS = (
    "exactly N tokens (all of them if the text holds fewer): whole --context windows chosen at random with "
    "--seed, the last one cut short"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("capture")
    g.add_argument("--hooks", action="append", metavar="PATTERN", help="hook name or glob; repeatable")
    g.add_argument("--attention", action="store_true", help="attention patterns [head, key] per query token")
    g.add_argument(
        "--attention-summaries",
        action="store_true",
        help="with --attention: keep only entropy, first-token weight and max per head",
    )
    g.add_argument("--routing", action="store_true", help="router logits, top-k experts and weights (MoE)")
    g.add_argument("--layers", type=int, nargs="+", help="only these layers (default: every layer)")
    g.add_argument("--heads", type=int, nargs="+", help="only these heads, with --attention (default: all)")
    g.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "float16", "bfloat16"],
        help="dtype of the stored activations and attention",
    )
    g.add_argument("--resume", action="store_true", help="continue an interrupted capture in --out")
    g.add_argument(
        "--store",
        metavar="LOCATION",
        help="write the store here: a folder, a file:// URL, or object storage (s3://bucket/prefix, "
        "with --workers; staged locally, uploaded range by range) (default: OUT/store)",
    )
    g.add_argument(
        "--shard-tokens", type=positive_int, help="tokens per shard (default: about 64 MB, whole batches)"
    )
    workers_flags(parser, "capture")


def run(args: argparse.Namespace) -> dict:
    from workbench.capturing import capture_to_run, check_capture_out
    from workbench.probes.capture import ActivationProbe, AttentionProbe, RoutingProbe
    from workbench.runs import RunFolder

    if args.out is None:
        raise WorkbenchError("capture needs --out DIR: the folder that will hold the store.")
    if not (args.hooks or args.attention or args.routing):
        raise WorkbenchError("Nothing to capture: give --hooks PATTERN, --attention and/or --routing.")
    check_capture_out(args.out, args.resume, args.store, args.workers)  # before the run folder is touched
    workers = workers_of(args)
    folder = RunFolder.create(args.out, "capture", args.command_line)
    with folder:
        handle, windows = load_inputs(args)
        probes: list = (
            [ActivationProbe(args.hooks, layers=args.layers, dtype=args.dtype)] if args.hooks else []
        )
        if args.attention:
            probes.append(
                AttentionProbe(
                    layers=args.layers,
                    heads=args.heads,
                    summaries_only=args.attention_summaries,
                    dtype=args.dtype,
                )
            )
        if args.routing:
            probes.append(RoutingProbe(layers=args.layers))
        result = capture_to_run(
            handle,
            windows,
            folder,
            probes,
            resume=args.resume,
            batch_size=args.batch_size,
            tokens_per_shard=args.shard_tokens,
            n_tokens=args.tokens,
            workers=workers,
            store=args.store,
        )
    if not args.json:
        where = args.store or folder.path / "store"
        print(
            f"captured {result.tokens} tokens, {len(result.fields)} fields, {result.bytes / 1e6:.1f} MB "
            f"in {result.shards} shards: {where}"
        )
    return {k: v for k, v in result.to_dict().items() if k != "kind"}
