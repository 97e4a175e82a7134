"""`workbench transcoder train|eval`: train a transcoder (sparse MLP replacement), or evaluate one."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from workbench.commands.flags import (
    default_model,
    optional_run,
    positive_int,
    record,
    workers_flags,
    workers_of,
)
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
    g.add_argument(
        "--store",
        help="train from this paired capture store instead of the model: a folder or URL (s3://bucket/prefix)",
    )
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
        choices=["lift", "auxk", "resample", "auxk+resample", "none"],
        help="for dead features: lift, raise a dead feature's encoder bias until it enters the top k on "
        "its nearest token (topk only); auxk, an auxiliary loss on the top dead features (topk only); "
        "resample, re-initialise them towards badly reconstructed inputs every --resample-every steps; "
        "auxk+resample, both (topk); or none (default: lift for topk from the data start, auxk for topk "
        "from a random start, resample for relu)",
    )
    g.add_argument(
        "--resample-every",
        type=positive_int,
        default=defaults.RESAMPLE_EVERY,
        help="steps between re-initialisations of dead features with the resample remedies",
    )
    g.add_argument(
        "--init",
        choices=["data", "random"],
        help="starting weights: data, each feature from one training pair's centred input and output "
        "(topk default: fewer dead features), or random (relu default)",
    )
    g.add_argument(
        "--pairs-dtype",
        choices=defaults.PAIRS_DTYPES,
        default="auto",
        help="precision of the model forward that makes training pairs: auto is bfloat16 on a "
        "GPU or a CPU with native bfloat16 (AVX-512 BF16, AMX), about twice as fast with pairs within "
        "about 1%% of float32's, else float32; float32 gives the exact activations",
    )
    g.add_argument(
        "--checkpoint-every",
        type=positive_int,
        default=defaults.CHECKPOINT_EVERY,
        help="steps between checkpoints",
    )
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    g.add_argument(
        "--nproc",
        type=positive_int,
        default=1,
        help="train with DDP over N processes on this machine (gloo on the CPU, NCCL with one GPU each), "
        "each on its share of every --batch-tokens batch; under torchrun, its processes are used instead",
    )
    e = parser.add_argument_group("eval")
    e.add_argument(
        "--features", action="store_true", help="also fold the feature table (density, top contexts)"
    )
    workers_flags(parser, "eval --features: fold the feature table")


def _train(args: argparse.Namespace) -> dict:
    from workbench.models import load_model
    from workbench.runs import RunFolder
    from workbench.transcoders.run import train_transcoder, training_windows

    if args.out is None:
        raise WorkbenchError("transcoder train needs --out DIR: the folder for weights and checkpoints.")
    if args.workers or args.ray_address:
        raise WorkbenchError(
            "transcoder train runs on several processes with --nproc N (DDP), not on Ray workers; "
            "--workers applies to eval --features."
        )
    from workbench.scale.ddp import launched_by_torchrun

    if args.nproc > 1 or launched_by_torchrun():
        return _train_distributed(args)
    run = RunFolder.create(args.out, "transcoder", args.command_line)
    with run:
        handle = load_model(args.model or default_model(progress=True), device=args.device)
        windows = None
        if args.store is None:  # the train split, every window, in a seeded order; reused when exhausted
            windows = training_windows(handle, args.corpus, args.text, args.context, args.seed)
        settings = _settings(args)
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
    return _report(args, training, run.path)


def _settings(args: argparse.Namespace):
    """The TranscoderSettings the train flags ask for (a note when --tokens is not whole steps)."""
    from workbench.transcoders.run import TranscoderSettings, tokens_note
    from workbench.transcoders.train import TrainConfig

    train = TrainConfig(
        tokens=args.tokens or defaults.TRAIN_TOKENS,
        batch_size=args.batch_tokens,
        lr=args.lr,
        dead_tokens=args.dead_tokens,
        remedy=args.remedy,
        resample_every=args.resample_every,
        init=args.init,
        pairs_dtype=args.pairs_dtype,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
    )
    note = tokens_note(train.tokens, train.batch_size)
    if note:  # said before training starts, and recorded in the result's provenance
        print(f"note: {note}.", file=sys.stderr)
    return TranscoderSettings(
        layer=args.layer, arch=args.arch, width=args.width, k=args.k, l1=args.l1, skip=args.skip, train=train
    )


def _train_distributed(args: argparse.Namespace) -> dict:
    """--nproc N: N spawned DDP processes, this one keeping the run folder; or, under torchrun, this
    process is one of them (process 0 keeps the run folder)."""
    from workbench.runs import RunFolder
    from workbench.scale.ddp import from_env, launch, launched_by_torchrun
    from workbench.transcoders.distributed import TrainRequest, train_process
    from workbench.transcoders.run import TranscoderTraining
    from workbench.transcoders.train import TrainingInterrupted

    request = TrainRequest(
        model=args.model or default_model(progress=True),
        device=args.device,
        settings=_settings(args),
        out=Path(args.out),
        corpus=args.corpus,
        text=tuple(args.text) if args.text else None,
        context=args.context,
        seed=args.seed,
        store=args.store,
        resume=args.resume,
        windows_per_forward=args.batch_size,
    )
    comm = from_env(args.device) if launched_by_torchrun() else None
    if comm is not None and comm.rank != 0:  # process 0 keeps the run folder and reports
        train_process(comm, request)
        return {"process": comm.rank, "processes": comm.world, "out": str(args.out)}
    run = RunFolder.create(args.out, "transcoder", args.command_line)
    with run:
        run.begin()
        try:
            body = (
                train_process(comm, request)
                if comm is not None
                else launch(args.nproc, train_process, (request,), device=args.device)
            )
        except KeyboardInterrupt as err:  # the processes agreed to stop and saved a checkpoint
            if isinstance(err, TrainingInterrupted):
                raise
            raise TrainingInterrupted(str(err), getattr(err, "exit_code", 130) - 128) from None
        training = TranscoderTraining.from_dict(body)
        record(args, run, [training])
    return _report(args, training, run.path)


def _report(args: argparse.Namespace, training, path: Path) -> dict:
    if not args.json:
        print(
            f"trained {training.arch} transcoder on {training.model} layer {training.layer}: "
            f"{training.tokens} tokens in {training.seconds:.0f} s "
            f"({training.tokens_per_second:.0f} tokens/s); "
            f"saved in {path}"
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
        "source": training.source,
        "pairs_dtype_used": training.provenance.settings.get("pairs_dtype_used"),
        "final": training.curve[-1] if training.curve else {},
        "out": str(path),
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
            workers = workers_of(args)
            results.append(
                feature_table(
                    handle, tc, windows, batch_size=args.batch_size, seed=args.seed, workers=workers
                )
            )
        record(args, folder, results)
    if not args.json:
        print(result.table().round(4).to_string(index=False))
    return result.compact()
