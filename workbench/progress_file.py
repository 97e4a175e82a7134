"""progress.json: a run folder's live progress, written from the bars of `workbench.progress`.

A `ProgressFile` listens to the bars made while its run folder's `with` block runs. It keeps only the open
bars and a thinned curve, so memory does not grow with tokens or steps, and writes (atomically, through
the writer it is given) at most once per `interval` seconds; a phase that ends and the end of the run
are always written. Nothing is written before the run has begun (a command refused by its checks leaves
the folder as it was). The file:

    {"phase": str, "done": number, "total": number | null, "unit": str, "rate": number | null,
     "eta_s": number | null, "elapsed_s": number, "updated": iso, "curve": {...} | null}

Bars nest: while a bar is open, one opened inside it is a part of one of its units (an evaluation inside
a sweep level); the phase names both ("essential sweep: evaluate tiny-relu"), and `done` is the outer
bar's count plus the finished share of the inner one, so a sweep's rate and ETA move between levels.
`rate` counts only what was done since the outer bar opened (a resumed capture's earlier tokens do not
count). `curve` is what bars sent with `Bar.point` (the transcoder training loss against tokens), at most
`max_points` + 1 points: every 2^j-th point once there are too many, plus the latest.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from workbench.progress import Bar

PROGRESS = "progress.json"
INTERVAL_S = 1.0
MAX_POINTS = 300


class ThinnedCurve:
    """At most `limit` evenly spaced points of a stream of any length (and its latest point)."""

    def __init__(self, name: str, x_name: str, limit: int = MAX_POINTS) -> None:
        self.name, self.x_name, self.limit = name, x_name, max(2, limit)
        self.stride, self.seen = 1, 0
        self.points: list[tuple[float, float]] = []
        self.last: tuple[float, float] | None = None

    def add(self, x: float, y: float) -> None:
        if not (math.isfinite(x) and math.isfinite(y)):  # a diverged loss has no place on the chart
            return
        if self.seen % self.stride == 0:
            self.points.append((x, y))
            if len(self.points) > self.limit:  # keep every other point, take every other one from now
                self.points, self.stride = self.points[::2], 2 * self.stride
        self.seen += 1
        self.last = (x, y)

    def to_dict(self) -> dict:
        points = list(self.points)
        if self.last is not None and (not points or points[-1] != self.last):
            points.append(self.last)
        return {"name": self.name, "x": self.x_name, "points": [[_number(x), _number(y)] for x, y in points]}


@dataclass
class _Open:
    bar: Bar
    since: float  # clock time when it opened


@dataclass
class ProgressFile:
    """The listener a run folder activates; see the module docstring for what it writes and when."""

    path: Path
    write: Callable[[Path, Any], None]  # atomic JSON writer (workbench.runs.write_json)
    interval: float = INTERVAL_S
    clock: Callable[[], float] = time.monotonic
    max_points: int = MAX_POINTS
    writing: bool = False  # False until the run begins
    _open: list[_Open] = field(default_factory=list, init=False)  # open bars, outermost first
    _last: dict | None = field(default=None, init=False)  # the state when the last outer bar closed
    _curve: ThinnedCurve | None = field(default=None, init=False)
    _started: float = field(default=0.0, init=False)
    _written_at: float = field(default=-math.inf, init=False)
    _finished: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self._started = self.clock()

    # the listener (workbench.progress.Listener) ------------------------------------------------------
    def opened(self, bar: Bar) -> None:
        self._open.append(_Open(bar, self.clock()))
        self._changed()

    def updated(self, bar: Bar) -> None:
        self._changed()

    def closed(self, bar: Bar) -> None:
        index = next((i for i, o in enumerate(self._open) if o.bar is bar), None)
        if index is None:
            return
        if index == 0:  # the outermost bar ended: its final state stays until another bar opens
            self._last = self._state()
        del self._open[index]
        self._changed(force=index == 0)

    def point(self, name: str, x_name: str, x: float, y: float) -> None:
        if self._curve is None or (self._curve.name, self._curve.x_name) != (name, x_name):
            self._curve = ThinnedCurve(name, x_name, self.max_points)
        self._curve.add(x, y)
        self._changed()

    # the run folder's side -----------------------------------------------------------------------------
    def begin(self) -> None:
        """The run has begun: from now on the file is written (what happened before, at once)."""
        self.writing = True
        if self._open or self._last is not None:
            self._changed(force=True)

    def finish(self, complete: bool) -> None:
        """Write the final state (a complete run's shows done == total) and stop listening."""
        if self._finished:
            return
        state = self._state()
        if state is not None and complete:
            if state["total"] is None:
                state["total"] = state["done"]
            state["done"], state["eta_s"] = state["total"], 0.0
        self._finished = True
        if self.writing and state is not None:
            self._write_state(state)

    # internals ----------------------------------------------------------------------------------------
    def _changed(self, force: bool = False) -> None:
        if self._finished or not self.writing:
            return
        if not force and self.clock() - self._written_at < self.interval:
            return  # held back: the next report after the interval writes it
        state = self._state()
        if state is not None:
            self._write_state(state)

    def _write_state(self, state: dict) -> None:
        self._written_at = self.clock()
        with contextlib.suppress(OSError):  # e.g. the folder was deleted under the run: keep computing
            self.write(self.path, state)

    def _state(self) -> dict | None:
        now = self.clock()
        if not self._open:
            if self._last is None:
                return None
            state = dict(self._last)
        else:
            outer = self._open[0]
            bar = outer.bar
            done = bar.done + self._share(1)
            if bar.total is not None:
                done = min(done, bar.total)
            seconds = now - outer.since
            rate = (done - bar.initial) / seconds if seconds > 0 and done > bar.initial else None
            eta = (bar.total - done) / rate if rate and bar.total is not None else None
            state = {
                "phase": ": ".join(str(o.bar.desc) for o in self._open),
                "done": _number(done, round_to=3),
                "total": _number(bar.total),
                "unit": str(bar.unit),
                "rate": _number(rate),
                "eta_s": _number(eta, round_to=1),
            }
        state["elapsed_s"] = round(now - self._started, 1)
        state["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        state["curve"] = self._curve.to_dict() if self._curve is not None else None
        return state

    def _share(self, index: int) -> float:
        """The finished share (0..1) of the bar open at `index`, counting its own inner bars."""
        if index >= len(self._open):
            return 0.0
        bar = self._open[index].bar
        if not bar.total:
            return 0.0
        return min(1.0, max(0.0, (bar.done + self._share(index + 1)) / bar.total))


def _number(value: float | None, round_to: int | None = None) -> float | int | None:
    """JSON-ready: None for a missing or non-finite value, an int for a whole one, else `round_to`
    decimals (default: five significant digits)."""
    if value is None or not math.isfinite(value):
        return None
    if float(value).is_integer():
        return int(value)
    return round(value, round_to) if round_to is not None else float(f"{value:.5g}")
