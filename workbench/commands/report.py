"""`workbench report`: evaluate a model and write a self-contained HTML report."""

from __future__ import annotations

import argparse
from pathlib import Path

from workbench.commands import flags


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--include",
        type=Path,
        nargs="+",
        metavar="RUN_DIR",
        help="add the results of these run folders (e.g. a capture) as report sections",
    )


def run(args: argparse.Namespace) -> dict:
    from workbench.report import make_report
    from workbench.runs import RunFolder, read_run

    if args.out is None:  # the new folder is named after the model that the default resolves to
        args.model = args.model or flags.default_model(progress=True)
    label = Path(args.model).name if args.model else "model"  # with --out the label is not used
    included = [result for folder in args.include or [] for result in read_run(folder).results]
    folder = RunFolder.create(args.out, f"report-{label}", args.command_line)  # refusals first: no orphan
    with folder:
        handle, windows = flags.load_inputs(args)
        path = make_report(
            handle, windows, folder, batch_size=args.batch_size, seed=args.seed, extra=included
        )
    if not args.json:
        print(f"report: {path.resolve()}")
    return {"report": str(path.resolve()), "run": str(folder.path.resolve()), "model": handle.name}
