"""Reading a run's progress.json for the panel: tolerant of a missing, half-written or odd file.

The running command writes the file (atomically, about once a second); the server only reads it. What
the panel gets always has the same keys: the file's, each checked for its type (a wrong one reads as
null), plus the run's status, so that one message says both how far the run is and whether it still runs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

PROGRESS = "progress.json"
MAX_CURVE_POINTS = 2000  # a sane file holds a few hundred; more is cut, never sent whole


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _curve(value: Any) -> dict | None:
    if not isinstance(value, dict) or not isinstance(value.get("points"), list):
        return None
    points = []
    for point in value["points"][-MAX_CURVE_POINTS:]:
        if isinstance(point, list) and len(point) == 2:
            x, y = _number(point[0]), _number(point[1])
            if x is not None and y is not None:
                points.append([x, y])
    return {"name": _text(value.get("name")) or "", "x": _text(value.get("x")) or "", "points": points}


def clean_progress(data: Any) -> dict | None:
    """The Progress fields of a parsed progress.json, typed, or None when it is not a JSON object."""
    if not isinstance(data, dict):
        return None
    return {
        "phase": _text(data.get("phase")),
        "done": _number(data.get("done")),
        "total": _number(data.get("total")),
        "unit": _text(data.get("unit")),
        "rate": _number(data.get("rate")),
        "eta_s": _number(data.get("eta_s")),
        "elapsed_s": _number(data.get("elapsed_s")),
        "updated": _text(data.get("updated")),
        "curve": _curve(data.get("curve")),
    }


def read_progress(path: Path | None) -> dict | None:
    """The cleaned progress in `path` (a run folder's progress.json), None when absent or unreadable."""
    if path is None:
        return None
    try:
        return clean_progress(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):  # a writer that is not atomic, or a file being replaced
        return None


def progress_message(progress: dict | None, status: str) -> dict:
    """What the progress endpoint sends: the Progress keys (null where there is no file yet) and the
    run's status."""
    empty = clean_progress({})
    assert empty is not None
    return {**(progress or empty), "status": status}
