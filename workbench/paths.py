"""Locations of the shipped data (corpus, tokenizer, demo models), installed as `workbench.data`."""

from __future__ import annotations

import importlib
from pathlib import Path


def data_dir() -> Path:
    """The `data/` folder: in the repository for an editable install, in site-packages otherwise.

    `workbench.data` is a namespace package (no `__init__.py`, so the repository's top-level `data/`
    folder shadows nothing), hence its `__path__` rather than `importlib.resources.files`.
    """
    for entry in importlib.import_module("workbench.data").__path__:
        if (Path(entry) / "corpus").is_dir():
            return Path(entry)
    raise FileNotFoundError("workbench.data has no corpus/ folder: reinstall the package (pip install -e .)")


def demo_model_dir(name: str) -> Path:
    return data_dir() / "models" / name


def corpus_dir() -> Path:
    return data_dir() / "corpus"
