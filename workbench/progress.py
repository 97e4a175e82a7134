"""Progress of long loops: a tqdm bar for the terminal, and a report to whoever listens.

Cores make a `Bar` (or wrap an iterable in `tracked`) where they would make a tqdm bar. The bar is drawn
exactly when `show` is true (a core's `progress=` argument). Independently of `show`, every bar reports
its counts to the listener active in the current context, if any: a run folder activates one for the
duration of its `with` block (`workbench.progress_file.ProgressFile`, which writes progress.json), so a
core needs no run folder and knows nothing of files. Scope is a `contextvars.ContextVar` set and reset by
`listening`: no global state. Plain threads do not inherit it: a bar made in a worker thread reports to no
one unless the thread runs in a copy of the caller's context (`contextvars.copy_context().run`), and a
listener takes its reports from one thread at a time.

Units are the natural ones, plural ("tokens", "steps", "windows", "levels", "layers"); the terminal bar
shows tqdm's short form ("tok", "step", ...) unless `bar_unit` says otherwise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import Protocol, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
BAR_UNITS = {"tokens": "tok", "steps": "step", "windows": "window", "levels": "level", "layers": "layer"}


class Listener(Protocol):
    """What receives the bars' reports (see `workbench.progress_file.ProgressFile`)."""

    def opened(self, bar: Bar) -> None: ...

    def updated(self, bar: Bar) -> None: ...

    def closed(self, bar: Bar) -> None: ...

    def point(self, name: str, x_name: str, x: float, y: float) -> None: ...


_LISTENER: ContextVar[Listener | None] = ContextVar("workbench_progress_listener", default=None)


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[Listener]:
    """Bars made inside the block (in this context) report to `listener`; the previous one is restored."""
    token = _LISTENER.set(listener)
    try:
        yield listener
    finally:
        _LISTENER.reset(token)


def current_listener() -> Listener | None:
    return _LISTENER.get()


class Bar:
    """A tqdm bar (drawn when `show`) whose counts also go to the listener active when it was made.

    `total` and `done` are in `unit`; `initial` is what was done before this process started (a resumed
    capture or training), so that rates count only the work done now.
    """

    def __init__(
        self,
        total: int | None,
        *,
        desc: str,
        unit: str,
        show: bool = True,
        initial: int = 0,
        bar_unit: str | None = None,
    ) -> None:
        self.total, self.done, self.initial, self.desc, self.unit = total, initial, initial, desc, unit
        label = bar_unit or BAR_UNITS.get(unit, unit)
        self._bar = tqdm(total=total, initial=initial, unit=label, desc=desc, disable=not show)
        self._listener = _LISTENER.get()
        self._closed = False
        if self._listener is not None:
            self._listener.opened(self)

    def update(self, n: int = 1) -> None:
        self.done += n
        self._bar.update(n)
        if self._listener is not None:
            self._listener.updated(self)

    def set_total(self, total: int | None) -> None:
        """Change the total (e.g. a sweep that learns how many levels it needs as it goes)."""
        self.total = total
        self._bar.total = total
        self._bar.refresh()
        if self._listener is not None:
            self._listener.updated(self)

    def set_postfix(self, **values: object) -> None:
        """Figures shown after the terminal bar (tqdm's postfix); they are not reported."""
        self._bar.set_postfix(**values)

    def point(self, x: float, y: float, name: str = "loss", x_name: str = "tokens") -> None:
        """One point of a curve (e.g. the training loss at x tokens) for the listener; not drawn."""
        if self._listener is not None:
            self._listener.point(name, x_name, x, y)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._bar.close()
        if self._listener is not None:
            self._listener.closed(self)

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tracked(
    items: Iterable[T],
    *,
    desc: str,
    unit: str,
    show: bool = True,
    total: int | None = None,
    bar_unit: str | None = None,
) -> Iterator[T]:
    """`items`, one `Bar` step each (tqdm's `tqdm(items)`); the total is len(items) when it has one."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Bar(total, desc=desc, unit=unit, show=show, bar_unit=bar_unit) as bar:
        for item in items:
            yield item
            bar.update(1)
