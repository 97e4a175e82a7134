"""`workbench models`: the named models, their facts, on disk or not."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> dict:
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
