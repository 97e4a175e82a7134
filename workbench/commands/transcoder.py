"""`workbench transcoder train|eval`: train a transcoder (sparse MLP replacement), or evaluate one."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from workbench.commands.flags import default_model, optional_run, positive_int, record
from workbench.errors import WorkbenchError
from workbench.transcoders import defaults

TOKENS = (
    "train: N training tokens, as N // --batch-tokens optimiser steps of --batch-tokens tokens (at least "
    "one) from the train split's windows (reused when exhausted) or from --store "
    f"(default: {defaults.TRAIN_TOKENS}); eval: N tokens of the text, rounded up to whole --context "
    f"windows chosen at random with --seed (default: {defaults.EVAL_TOKENS})"
)


def run(args: argparse.Namespace) -> dict:
    if args.action == "train":
        return _train(args)
    return _eval(args)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["train", "eval"], help="train a transcoder, or evaluate one")
    parser.add_argument("dir", nargs="?", type=Path, help="eval: a training run folder or an SAE-Lens folder")
    parser.set_defaults(tokens=None)  # train: defaults.TRAIN_TOKENS; eval: defaults.EVAL_TOKENS
    g = parser.add_argument_group("train")
    g.add_argument("--layer", type=int, help="MLP layer (default: n_layers // 2)")
    g.add_argument(
        "--arch",
        default=defaults.ARCH,
        choices=["topk", "relu"],
        help="topk keeps the --k largest features per token; relu trains with an L1 penalty (--l1)",
    )
    g.add_argument(
        "--width", type=positive_int, help=f"features (default: {defaults.WIDTH_PER_D_MODEL} × d_model)"
    )
    g.add_argument("--k", type=positive_int, default=defaults.K, help="topk: features kept per token")
    g.add_argument("--l1", type=float, help="relu: L1 coefficient λ (default 3e-3, see the loss in train.py)")
    g.add_argument("--skip", action="store_true", help="add a linear skip connection x W_skipᵀ")
    g.add_argument("--store", type=Path, help="train from this paired capture store instead of the model")
    g.add_argument(
        "--batch-tokens", type=positive_int, default=defaults.BATCH_TOKENS, help="tokens per optimiser step"
    )
    g.add_argument("--lr", type=float, help="learning rate (default: 2e-4/sqrt(width/2^14) topk, 4e-4 relu)")
    g.add_argument(
        "--dead-tokens",
        type=positive_int,
        default=defaults.DEAD_TOKENS,
        help="a feature is dead after this many tokens without firing (or 1/40 of a shorter run)",
    )
    g.add_argument(
        "--remedy",
        choices=["auxk", "resample", "none"],
        help="for dead features: auxk, an auxiliary loss on the top dead features (topk only); resample, "
        "re-initialise them (relu only); or none (default: auxk for topk, resample for relu)",
    )
    g.add_argument(
        "--checkpoint-every",
        type=positive_int,
        default=defaults.CHECKPOINT_EVERY,
        help="steps between checkpoints",
    )
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    e = parser.add_argument_group("eval")
    e.add_argument(
        "--features", action="store_true", help="also fold the feature table (density, top contexts)"
    )


def _train(args: argparse.Namespace) -> dict:
    from workbench.models import load_model
    from workbench.runs import RunFolder
    from workbench.transcoders.run import TranscoderSettings, tokens_note, train_transcoder, training_windows
    from workbench.transcoders.train import TrainConfig

    if args.out is None:
        raise WorkbenchError("transcoder train needs --out DIR: the folder for weights and checkpoints.")
    run = RunFolder.create(args.out, "transcoder", args.command_line)
    with run:
        handle = load_model(args.model or default_model(progress=True), device=args.device)
        windows = None
        if args.store is None:  # the train split, every window, in a seeded order; reused when exhausted
            windows = training_windows(handle, args.corpus, args.text, args.context, args.seed)
        train = TrainConfig(
            tokens=args.tokens or defaults.TRAIN_TOKENS,
            batch_size=args.batch_tokens,
            lr=args.lr,
            dead_tokens=args.dead_tokens,
            remedy=args.remedy,
            checkpoint_every=args.checkpoint_every,
            seed=args.seed,
        )
        note = tokens_note(train.tokens, train.batch_size)
        if note:  # said before training starts, and recorded in the result's provenance
            print(f"note: {note}.", file=sys.stderr)
        settings = TranscoderSettings(
            layer=args.layer,
            arch=args.arch,
            width=args.width,
            k=args.k,
            l1=args.l1,
            skip=args.skip,
            train=train,
        )
        _, training = train_transcoder(
            handle,
            windows,
            settings,
            out=run.path,
            store=args.store,
            resume=args.resume,
            windows_per_forward=args.batch_size,
            on_start=run.begin,  # an existing run folder is rewritten only once training starts
        )
        record(args, run, [training])
    if not args.json:
        print(
            f"trained {training.arch} transcoder on {training.model} layer {training.layer}: "
            f"{training.tokens} tokens in {training.seconds:.0f} s "
            f"({training.tokens_per_second:.0f} tokens/s); "
            f"saved in {run.path}"
        )
    return {
        "model": training.model,
        "layer": training.layer,
        "arch": training.arch,
        "width": training.width,
        "k": training.k,
        "tokens": training.tokens,
        "tokens_requested": training.tokens_requested,
        "seconds": training.seconds,
        "tokens_per_second": training.tokens_per_second,
        "final": training.curve[-1] if training.curve else {},
        "out": str(run.path),
    }


def _eval(args: argparse.Namespace) -> dict:
    from workbench.corpus import windows_for
    from workbench.models import load_model
    from workbench.transcoders.evaluate import check_fits, evaluate_transcoder
    from workbench.transcoders.features import feature_table
    from workbench.transcoders.run import load_any

    if args.dir is None:
        raise WorkbenchError(
            "transcoder eval needs the folder of a trained transcoder: workbench transcoder eval DIR"
        )
    tc = load_any(args.dir)
    with optional_run(args, "transcoder-eval") as folder:
        handle = load_model(args.model or tc.cfg.model or default_model(progress=True), device=args.device)
        check_fits(handle, tc)  # refused before any window is read
        windows = windows_for(
            handle,
            corpus=args.corpus,
            text=args.text,
            context=args.context,
            n_tokens=args.tokens or defaults.EVAL_TOKENS,
            seed=args.seed,
        )
        result = evaluate_transcoder(handle, tc, windows, batch_size=args.batch_size, seed=args.seed)
        results = [result]
        if args.features:
            results.append(feature_table(handle, tc, windows, batch_size=args.batch_size, seed=args.seed))
        record(args, folder, results)
    if not args.json:
        print(result.table().round(4).to_string(index=False))
    return result.compact()
