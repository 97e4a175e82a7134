"""Where the workbench keeps what it fetches or converts: $WORKBENCH_CACHE, else the user cache folder."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache root; `WORKBENCH_CACHE` overrides the platform's user cache folder."""
    override = os.environ.get("WORKBENCH_CACHE")
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "workbench"
