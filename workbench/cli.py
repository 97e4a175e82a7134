"""The `workbench` command. Every analysis command takes the same common flags (see `common_flags`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

from workbench.errors import WorkbenchError

DEFAULT_TOKENS = 16384
DEFAULT_CONTEXT = 128


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
    g.add_argument("--tokens", type=int, default=DEFAULT_TOKENS, help="tokens to use (whole windows)")
    g.add_argument("--context", type=int, default=DEFAULT_CONTEXT, help="window length in tokens")
    g.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
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
    except WorkbenchError as err:
        print(f"note: smollm2-135m cannot be had ({err}); using tiny-relu.", file=sys.stderr)
        return "tiny-relu"


def _load(args):
    from workbench.corpus import windows_for
    from workbench.models import load_model

    name = args.model or default_model(progress=True)
    handle = load_model(name, device=args.device)
    windows = windows_for(
        handle, corpus=args.corpus, text=args.text, context=args.context, n_tokens=args.tokens, seed=args.seed
    )
    return handle, windows


def _evaluation_results(args, handle, windows) -> list:
    from workbench.evaluate import evaluate
    from workbench.facts import CorpusFactsResult, ModelFactsResult

    result = evaluate(handle, windows, batch_size=args.batch_size, seed=args.seed)
    return [ModelFactsResult.of(handle), CorpusFactsResult.of(windows, handle), result]


def cmd_models(args) -> dict:
    from workbench.models import MODELS

    rows = [
        {
            "name": n,
            "description": MODELS.get(n).description,
            "available": MODELS.get(n).available(),
            "facts": MODELS.get(n).facts,
        }
        for n in MODELS
    ]
    if not args.json:
        for row in rows:
            f = row["facts"]
            state = "available" if row["available"] else "fetched on first use"
            print(
                f"{row['name']:14s} {f['architecture']:22s} layers={f['n_layers']} d_model={f['d_model']} "
                f"d_mlp={f['d_mlp']} act={f['act_fn']} moe={f['moe']} ({state})"
            )
    return {"models": rows}


def cmd_evaluate(args) -> dict:
    from workbench.runs import RunFolder

    run = RunFolder.create(args.out, "evaluate", " ".join(sys.argv)) if args.out else None
    handle, windows = _load(args)
    results = _evaluation_results(args, handle, windows)
    if run:
        run.save(results)
    evaluation = results[-1]
    if not args.json:
        print(evaluation.table().to_string(index=False))
    body = {k: v for k, v in evaluation.to_dict().items() if k not in ("kind", "loss_histogram")}
    return body


def cmd_report(args) -> dict:
    from workbench.report import write_report
    from workbench.runs import RunFolder

    label = Path(args.model).name if args.model else "default"
    run = RunFolder.create(args.out, f"report-{label}", " ".join(sys.argv))  # refuse a bad --out first
    handle, windows = _load(args)
    results = _evaluation_results(args, handle, windows)
    run.save(results, files=["report.html"])
    path = write_report(run.path)
    if not args.json:
        print(f"report: {path.resolve()}")
    return {"report": str(path.resolve()), "run": str(run.path.resolve()), "model": handle.name}


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], dict], str, bool]] = {
    "models": (cmd_models, "list the named models, their facts and whether each is on disk", False),
    "evaluate": (cmd_evaluate, "held-out loss, perplexity and accuracy, per domain", True),
    "report": (cmd_report, "evaluate a model and write a self-contained HTML report in a run folder", True),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description="Interpretability and sparsity workbench.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text, common) in COMMANDS.items():
        if common:
            sub.add_parser(name, help=help_text, parents=[common_flags()])
        else:
            p = sub.add_parser(name, help=help_text)
            p.add_argument("--json", action="store_true", help="print JSON on stdout, nothing else")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = COMMANDS[args.command][0]
    try:
        # With --json, stdout carries the JSON alone: anything a library prints goes to stderr.
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            body = handler(args)
    except WorkbenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; partial run folders keep status 'running'.", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(body, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
