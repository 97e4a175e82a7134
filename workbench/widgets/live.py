"""Run the newest state only: controls move faster than replays finish, so requests are coalesced.

One background thread per widget takes the latest submitted state. Each run gets a `cancelled` callback
that turns true as soon as a newer state arrives; the replay engine asks it between layers and abandons
the stale replay (`ReplayAbandoned`). Only a run that is still the newest when it finishes is drawn.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from workbench.replay.engine import ReplayAbandoned


class LatestOnly:
    """Coalesce states submitted from controls; compute each newest one on a worker thread.

    `compute(state, cancelled)` returns a value; `draw(value)` shows it; `fail(exc)` shows an error;
    `busy(flag)` switches the busy indicator. `compute` runs on the worker; the others run there too,
    after a check that the state is still the newest (ipywidgets' trait updates are thread-safe to send).
    """

    def __init__(
        self,
        compute: Callable[[Any, Callable[[], bool]], Any],
        draw: Callable[[Any], None],
        fail: Callable[[BaseException], None],
        busy: Callable[[bool], None] = lambda flag: None,
        name: str = "workbench-widget",
    ) -> None:
        self._compute, self._draw, self._fail, self._busy = compute, draw, fail, busy
        self._lock = threading.Condition()
        self._pending: Any = None
        self._has_pending = False
        self._generation = 0  # bumped by every submit
        self._drawn = 0  # the generation last drawn (or failed)
        self._closed = False
        self.abandoned = 0  # replays stopped between layers because a newer state came
        self.skipped = 0  # states never started because a newer one replaced them first
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, state: Any) -> int:
        """Ask for `state` to be computed and drawn; replaces any state not yet started. Returns its id."""
        with self._lock:
            if self._has_pending:
                self.skipped += 1
            self._pending, self._has_pending = state, True
            self._generation += 1
            self._lock.notify_all()
            return self._generation

    def wait(self, timeout: float | None = 60.0) -> bool:
        """Block until the newest submitted state has been drawn (or failed); False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: self._drawn == self._generation or self._closed, timeout)

    @property
    def idle(self) -> bool:
        with self._lock:
            return self._drawn == self._generation

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()

    def _loop(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._has_pending or self._closed)
                if self._closed:
                    return
                state, generation = self._pending, self._generation
                self._has_pending = False

            def cancelled(generation: int = generation) -> bool:
                return self._generation != generation or self._closed

            self._busy(True)
            try:
                value = self._compute(state, cancelled)
            except ReplayAbandoned:
                self.abandoned += 1
                continue
            except Exception as exc:  # shown in the widget, never a traceback in the log
                if not cancelled():
                    self._fail(exc)
                    self._finish(generation)
                continue
            if not cancelled():
                try:
                    self._draw(value)
                except Exception as exc:
                    self._fail(exc)
                self._finish(generation)

    def _finish(self, generation: int) -> None:
        with self._lock:
            if generation == self._generation:
                self._busy(False)
            self._drawn = max(self._drawn, generation)
            self._lock.notify_all()
