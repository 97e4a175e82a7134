"""Locations of the shipped data (corpus, tokenizer, demo models), installed as `workbench.data`."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def data_dir() -> Path:
    """The `data/` folder: in the repository for an editable install, in site-packages otherwise."""
    return Path(str(files("workbench.data")))


def demo_model_dir(name: str) -> Path:
    return data_dir() / "models" / name


def corpus_dir() -> Path:
    return data_dir() / "corpus"
