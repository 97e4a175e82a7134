"""Where captured values go: the on-disk store, in-flight reducers, or memory.

Every sink sees the same calls: `open(fields, n_tokens)` (returns how many tokens are already
done, for resumed captures), `consume(values, meta)` once per batch, and `close()`.

A reducer folds statistics as batches pass, and merges: `a.merge(b)` folds into `a` what `b` saw, so
that reducers of disjoint token ranges, folded on separate workers, merge into the reducer of all of
them (`workbench.scale.fold`). Sums, counts and histograms merge by adding; `Additive` gives that for
free to a reducer that names its sums (`additive`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch

from workbench.store import FieldSpec, StoreWriter


class Sink(Protocol):
    def open(self, fields: list[FieldSpec], n_tokens: int) -> int: ...
    def consume(self, values: dict[str, torch.Tensor], meta: dict[str, torch.Tensor]) -> None: ...
    def close(self) -> None: ...


class Reducer(Protocol):
    """Folds statistics as batches pass (e.g. firing counts), so a million tokens cost no disk.

    `merge(other)`: fold in another reducer of the same kind and settings that saw other tokens; after
    it, this reducer equals one that saw both (merge reducers of consecutive ranges in range order, so
    that any per-token order they keep is the one-process order).
    """

    def update(self, values: dict[str, torch.Tensor], meta: dict[str, torch.Tensor]) -> None: ...
    def merge(self, other: Any) -> None: ...


def add_state(mine: Any, theirs: Any, what: str = "state") -> Any:
    """`mine` + `theirs` for one piece of reducer state: tensors (same shape and dtype), numbers, dicts
    of them (keys united), lists (concatenated, mine first) and objects with their own `merge`."""
    if isinstance(mine, torch.Tensor) and isinstance(theirs, torch.Tensor):
        if mine.shape != theirs.shape or mine.dtype != theirs.dtype:
            raise ValueError(
                f"cannot merge {what}: {mine.dtype} {tuple(mine.shape)} and {theirs.dtype} "
                f"{tuple(theirs.shape)} (reducers of different settings?)"
            )
        return mine + theirs
    if isinstance(mine, dict) and isinstance(theirs, dict):
        out = dict(mine)
        for key, value in theirs.items():
            out[key] = add_state(mine[key], value, f"{what}[{key!r}]") if key in mine else value
        return out
    if isinstance(mine, list) and isinstance(theirs, list):
        return mine + theirs
    if hasattr(mine, "merge") and type(mine) is type(theirs):
        mine.merge(theirs)
        return mine
    numbers = (int, float, torch.Tensor)  # a number + a tensor: the empty state `0` of a dict of sums
    if isinstance(mine, numbers) and isinstance(theirs, numbers) and not isinstance(mine, bool):
        return mine + theirs
    raise TypeError(f"cannot merge {what}: {type(mine).__name__} and {type(theirs).__name__}")


class Additive:
    """A reducer (or a part of one) whose state is sums: name them in `additive`, and `merge` adds them."""

    additive: ClassVar[tuple[str, ...]] = ()

    def merge(self, other: Any) -> None:
        if type(other) is not type(self):
            raise TypeError(f"cannot merge a {type(other).__name__} into a {type(self).__name__}")
        for name in self.additive:
            setattr(self, name, add_state(getattr(self, name), getattr(other, name), name))


def merge_all(reducers: Iterable[Any]) -> Any:
    """The first reducer with every later one merged into it, in order."""
    it = iter(reducers)
    first = next(it)
    for other in it:
        first.merge(other)
    return first


class MemorySink:
    """Keeps everything in memory, for small interactive work: `.values[name]`, `.meta[key]`."""

    def __init__(self) -> None:
        self._values: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._meta: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.values: dict[str, torch.Tensor] = {}
        self.meta: dict[str, torch.Tensor] = {}
        self.fields: list[FieldSpec] = []

    def open(self, fields: list[FieldSpec], n_tokens: int) -> int:
        self.fields = fields
        return 0

    def consume(self, values: dict[str, torch.Tensor], meta: dict[str, torch.Tensor]) -> None:
        for name, value in values.items():
            self._values[name].append(value)
        for key, value in meta.items():
            self._meta[key].append(value)

    def close(self) -> None:
        self.values = {k: torch.cat(v) for k, v in self._values.items()}
        self.meta = {k: torch.cat(v) for k, v in self._meta.items()}
        self._values.clear()
        self._meta.clear()


class ReducerSink:
    """Hands every batch to each reducer and keeps nothing itself."""

    def __init__(self, reducers: list[Reducer]) -> None:
        self.reducers = reducers

    def open(self, fields: list[FieldSpec], n_tokens: int) -> int:
        return 0

    def consume(self, values: dict[str, torch.Tensor], meta: dict[str, torch.Tensor]) -> None:
        for reducer in self.reducers:
            reducer.update(values, meta)

    def close(self) -> None:
        pass


class StoreSink:
    """Streams into a sharded activation store on disk (memory stays bounded by one shard)."""

    def __init__(
        self,
        path: str | Path,
        info: dict[str, Any],
        resume: bool = False,
        tokens_per_shard: int = 8192,
        base_token: int = 0,
    ) -> None:
        self.path, self.info, self.resume, self.tokens_per_shard = Path(path), info, resume, tokens_per_shard
        self.base_token = base_token  # a range of a coordinated store: where its first token sits
        self.writer: StoreWriter | None = None
        self.resumed_from = 0  # tokens the store already held when opened

    def open(self, fields: list[FieldSpec], n_tokens: int) -> int:
        self.writer = StoreWriter.open(
            self.path,
            fields,
            n_tokens,
            self.info,
            resume=self.resume,
            tokens_per_shard=self.tokens_per_shard,
            base_token=self.base_token,
        )
        self.resumed_from = self.writer.tokens_done
        return self.resumed_from

    def consume(self, values: dict[str, torch.Tensor], meta: dict[str, torch.Tensor]) -> None:
        assert self.writer is not None, "open() first"
        self.writer.append(values, meta)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def abort(self) -> None:
        """Release the store after an error, leaving it resumable (nothing partial is written)."""
        if self.writer is not None:
            self.writer.__exit__(RuntimeError, RuntimeError("capture aborted"), None)


class TeeSink:
    """Feeds one capture to several sinks (the store and the reducers); `opened()` runs once all are open.

    The first sink says how many tokens are done (a resumed store)."""

    def __init__(self, *sinks, opened=None) -> None:
        self.sinks = sinks
        self.opened = opened

    def open(self, fields, n_tokens: int) -> int:
        done = [sink.open(fields, n_tokens) for sink in self.sinks]
        if self.opened is not None:
            self.opened()
        return done[0]

    def consume(self, values, meta) -> None:
        for sink in self.sinks:
            sink.consume(values, meta)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()

    def abort(self) -> None:
        for sink in self.sinks:
            getattr(sink, "abort", lambda: None)()
