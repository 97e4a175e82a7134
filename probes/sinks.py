"""Where captured values go: the on-disk store, in-flight reducers, or memory.

Every sink sees the same calls: `open(fields, n_tokens)` (returns how many tokens are already
done, for resumed captures), `consume(values, meta)` once per batch, and `close()`.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Protocol

import torch

from workbench.store import FieldSpec, StoreWriter


class Sink(Protocol):
    def open(self, fields: list[FieldSpec], n_tokens: int) -> int: ...
    def consume(self, values: dict[str, torch.Tensor], meta: dict[str, torch.Tensor]) -> None: ...
    def close(self) -> None: ...


class Reducer(Protocol):
    """Folds statistics as batches pass (e.g. firing counts), so a million tokens cost no disk."""

    def update(self, values: dict[str, torch.Tensor], meta: dict[str, torch.Tensor]) -> None: ...


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
        self, path: str | Path, info: dict[str, Any], resume: bool = False, tokens_per_shard: int = 8192
    ) -> None:
        self.path, self.info, self.resume, self.tokens_per_shard = Path(path), info, resume, tokens_per_shard
        self.writer: StoreWriter | None = None
        self.resumed_from = 0  # tokens the store already held when opened

    def open(self, fields: list[FieldSpec], n_tokens: int) -> int:
        self.writer = StoreWriter.open(
            self.path, fields, n_tokens, self.info, resume=self.resume, tokens_per_shard=self.tokens_per_shard
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
