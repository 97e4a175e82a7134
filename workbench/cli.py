"""The `workbench` command: the registry of commands and `main`.

Each command lives in its own module under `workbench/commands/` with `add_arguments(parser)` and
`run(args) -> dict` (and, when it reads --tokens N in its own way, `TOKENS`, the help of --tokens); the
flags every analysis command shares are in `workbench.commands.flags`. Command modules import nothing heavy
at module level, so that building the parser (`workbench --help`) stays quick; their cores are imported
when a command runs. Nothing imports this module but the console-script entry point, its twin
`python -m workbench` (`__main__.py`) and the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
from dataclasses import dataclass
from types import ModuleType

from workbench.commands.flags import WINDOWS, FailedWith, HelpFormatter, common_flags
from workbench.errors import WorkbenchError
from workbench.registry import Registry


@dataclass(frozen=True)
class Command:
    module: str  # under workbench.commands: add_arguments(parser), run(args) -> dict, optional TOKENS
    help: str
    common_flags: bool = True

    def load(self) -> ModuleType:
        return importlib.import_module(f"workbench.commands.{self.module}")


COMMANDS: Registry[Command] = Registry("command")
COMMANDS.register("models", Command("models", "list the named models, their facts, on disk or not", False))
COMMANDS.register("evaluate", Command("evaluate", "held-out loss, perplexity and accuracy, per domain"))
COMMANDS.register("report", Command("report", "evaluate a model and write a self-contained HTML report"))
COMMANDS.register("capture", Command("capture", "stream activations, attention, routing to a store"))
COMMANDS.register("inspect", Command("inspect", "describe (and --verify) an activation store", False))
COMMANDS.register("bench", Command("bench", "benchmarks that print ratios against same-run baselines"))
COMMANDS.register(
    "sparsity", Command("sparsity", "lazy-neuron activation density per layer, input kind and domain")
)
COMMANDS.register("experts", Command("experts", "MoE routing balance, specialization and expert masking"))
COMMANDS.register("moefy", Command("moefy", "split dense MLPs into experts and measure what the top k carry"))
COMMANDS.register(
    "transcoder", Command("transcoder", "train and evaluate transcoders (sparse MLP replacements)")
)
COMMANDS.register(
    "replay",
    Command(
        "replay",
        "apply edits (masks, top-k, skips, pruning, splices) and measure their effect, replaying from L",
    ),
)
COMMANDS.register(
    "finercut",
    Command(
        "finercut",
        "greedy sublayer removal: the loss as attention / MLP sublayers are removed least-harm first",
    ),
)
COMMANDS.register("essential", Command("essential", "one-shot pruning sweep and essential sparsity s*"))


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
        module = command.load()
        about = {"help": command.help, "description": command.help, "formatter_class": HelpFormatter}
        if command.common_flags:
            p = sub.add_parser(name, parents=[common_flags(getattr(module, "TOKENS", WINDOWS))], **about)
        else:
            p = sub.add_parser(name, **about)
            p.add_argument("--json", action="store_true", help="print JSON on stdout, nothing else")
        module.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.command_line = " ".join(["workbench", *argv])
    try:
        # With --json, stdout carries the JSON alone: anything a library prints goes to stderr.
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            body = COMMANDS.get(args.command).load().run(args)
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
