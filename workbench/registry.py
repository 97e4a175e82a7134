"""Registries by name (SAE-Lens style): models, corpora, result kinds, edit kinds, commands, benchmarks."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from workbench.errors import WorkbenchError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name → entry map whose lookup error lists the known names and says how to add one."""

    def __init__(self, kind: str, how_to_add: str = "") -> None:
        self.kind = kind
        self.how_to_add = how_to_add
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def decorator(self, name: str) -> Callable[[T], T]:
        """`@REGISTRY.decorator("name")` registers the decorated class or function."""
        return lambda entry: self.register(name, entry)

    def get(self, name: str) -> T:
        if name not in self._entries:
            close = difflib.get_close_matches(name, list(self._entries), n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise WorkbenchError(
                f"Unknown {self.kind} {name!r}.{hint} Known: {', '.join(self._entries) or '(none)'}. "
                f"{self.how_to_add}".strip()
            )
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)
