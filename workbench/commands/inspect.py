"""`workbench inspect`: describe (and --verify) an activation store."""

from __future__ import annotations

import argparse
from pathlib import Path

from workbench.commands.flags import FailedWith


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dir", help="a capture run folder, a store folder, or a store's URL (file://, s3://bucket/prefix)"
    )
    parser.add_argument("--verify", action="store_true", help="check every shard's checksum")


def run(args: argparse.Namespace) -> dict:
    from workbench.store import inspect_store
    from workbench.store.ranges import store_location
    from workbench.store.remote import is_remote

    path = args.dir if is_remote(args.dir) else store_location(args.dir)
    if isinstance(path, Path) and (path / "store").is_dir():
        path = path / "store"
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
