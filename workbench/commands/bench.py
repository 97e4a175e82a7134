"""`workbench bench`: benchmarks that print ratios against same-run baselines."""

from __future__ import annotations

import argparse
import json

from workbench.commands.flags import WINDOWS, calibration_flag, load_inputs, positive_int
from workbench.transcoders.defaults import PAIRS_DTYPES

TOKENS = (
    f"{WINDOWS}; capture and essential run over all of them, transcoder evaluates on them (and trains on "
    "--train-tokens), replay times only the first --batch-size windows"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "which", help="which benchmark: capture, essential, transcoder, replay, widgets, scale"
    )
    g = parser.add_argument_group("transcoder and scale benchmarks")
    g.add_argument(
        "--train-tokens",
        type=positive_int,
        default=409_600,
        help="training budget of both trainers (transcoder) or of each DDP run (scale): train-split "
        "tokens, rounded up to whole windows",
    )
    calibration_flag(parser, "bench transcoder: the training text")
    g.add_argument("--width", type=positive_int, help="features (default: 16 × d_model; scale: 8 × d_model)")
    g.add_argument("--k", type=positive_int, default=32, help="features kept per token")
    g.add_argument("--layer", type=int, help="MLP layer (default: n_layers // 2)")
    g.add_argument(
        "--pairs-dtype",
        choices=PAIRS_DTYPES,
        default="auto",
        help="transcoder: precision of our training forward (auto: bfloat16 on a CPU or GPU with native "
        "bfloat16, else float32)",
    )
    g.add_argument(
        "--sparsify-dtype",
        choices=PAIRS_DTYPES,
        default="auto",
        help="transcoder: precision of sparsify's model (auto: the checkpoint's, as sparsify's command line "
        "loads it on a CPU)",
    )
    parser.set_defaults(tokens=4096, batch_size=4)


def run(args: argparse.Namespace) -> dict:
    from workbench.bench import BENCHMARKS

    bench = BENCHMARKS.get(args.which)
    options = {}
    if args.which == "transcoder":  # trains on the calibration source: resolved (or refused) first
        from workbench.calibration import calibration_source

        options = {"train_tokens": args.train_tokens, "width": args.width, "k": args.k, "layer": args.layer}
        source = calibration_source(args.corpus, args.text, args.calibration, "bench transcoder's training")
        options |= {"seed": args.seed, "calibration": source}
        options |= {"pairs_dtype": args.pairs_dtype, "sparsify_dtype": args.sparsify_dtype}
    elif args.which == "scale":
        from workbench.scale.cluster import require_ray

        require_ray()  # refused before the model loads when the scale extra is missing
        options = {"train_tokens": args.train_tokens, "width": args.width, "k": args.k}
    handle, windows = load_inputs(args)
    body = bench(handle, windows, batch_size=args.batch_size, **options)
    if not args.json:
        print(json.dumps(body, indent=2))
    return body
