"""StoreWriter: buffers appended tokens into one shard-sized buffer and writes each full shard durably.

A full shard is written by one background thread while the next one fills, so capture overlaps its
forward passes with serialising, hashing and fsyncing (at most two shards are in memory).

Durability order for every shard: write `.shard-N.safetensors.tmp`, fsync, rename to its final name,
fsync the folder, and only then list it (with size and checksum) in a fresh manifest. Whatever moment
the process dies, the manifest lists only whole shards; resume deletes anything else of ours.
"""

from __future__ import annotations

import contextlib
import json
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from workbench.errors import WorkbenchError
from workbench.store.format import (
    DTYPES,
    MANIFEST,
    META_DTYPE,
    META_FIELDS,
    SHARD_METADATA_KEY,
    STORE_FORMAT,
    FieldSpec,
    check_fields,
    field_key,
    fsync_dir,
    meta_key,
    now,
    shard_name,
    temp_name,
    write_manifest,
)
from workbench.store.lock import StoreLock
from workbench.store.opening import check_folder, preflight, prepare
from workbench.store.shardfile import write_shard


class StoreWriter:
    """Streams batches of tokens into a store folder; holds at most one shard of tokens in memory.

    Use `StoreWriter.open(...)`, then `append` batches and `close()` (or use it as a context manager:
    an exception inside leaves the store resumable, with nothing partial written).
    """

    def __init__(
        self,
        path: Path,
        fields: list[FieldSpec],
        manifest: dict[str, Any],
        lock: StoreLock,
        tokens_per_shard: int,
    ) -> None:
        self.path = path
        self.fields = fields
        self.tokens_per_shard = tokens_per_shard
        self.tokens_done: int = manifest["tokens_written"]  # durable: listed in the manifest
        self._manifest = manifest
        self._lock = lock
        self._buffer: dict[str, torch.Tensor] | None = None  # shard key -> [capacity, *shape]
        self._filled = 0
        self._queued = self.tokens_done  # tokens handed to the shard writer (durable or in flight)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        self._pending: Future | None = None

    @classmethod
    def open(
        cls,
        path: str | Path,
        fields: list[FieldSpec],
        n_tokens: int,
        info: dict[str, Any],
        resume: bool = False,
        tokens_per_shard: int = 8192,
        base_token: int = 0,
    ) -> StoreWriter:
        """Create a store in `path` (empty or new), or with `resume=True` continue the one there.

        `base_token`: the store is one range of a coordinated store (`workbench.store.ranges`) whose first
        token is that token of the whole; shard headers carry whole-store positions.
        """
        folder = Path(path).expanduser()
        fields = check_fields(fields)
        if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens <= 0:
            raise WorkbenchError(f"n_tokens must be a positive whole number of tokens, got {n_tokens!r}.")
        if tokens_per_shard <= 0:
            raise WorkbenchError(f"tokens_per_shard must be positive, got {tokens_per_shard}.")
        try:
            json.dumps(info, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise WorkbenchError(
                f"The store's info must be plain JSON (it goes into {MANIFEST}): {e}."
            ) from e
        if folder.exists() and not folder.is_dir():
            raise WorkbenchError(f"{folder} is a file; give a folder for the activation store.")
        check_folder(folder, resume)  # refuse early, before dropping a lock file into a foreign folder
        created = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        lock = StoreLock.acquire(folder)
        try:
            manifest = prepare(folder, fields, n_tokens, info, resume, base_token)
            preflight(folder, fields, n_tokens - manifest["tokens_written"], tokens_per_shard)
            write_manifest(folder, manifest)
        except BaseException:
            lock.release()
            if created:  # refused before anything was written: leave no trace
                with contextlib.suppress(OSError):
                    lock.path.unlink()
                    folder.rmdir()
            raise
        return cls(folder, fields, manifest, lock, tokens_per_shard)

    @property
    def n_tokens(self) -> int:
        """Tokens the capture planned to write."""
        return self._manifest["n_tokens"]

    @property
    def tokens_appended(self) -> int:
        """Tokens handed to `append` so far (durable, being written, or buffered)."""
        return self._queued + self._filled

    def append(self, tensors: dict[str, torch.Tensor], meta: dict[str, torch.Tensor]) -> None:
        """Add a batch: `tensors[name]` is [n, *shape] per field, `meta[k]` is [n] per META_FIELDS key."""
        if not self._lock.held:
            raise WorkbenchError(f"The store writer for {self.path} is closed; open it again to append.")
        n = self._check_batch(tensors, meta)
        if self.tokens_appended + n > self.n_tokens:
            raise WorkbenchError(
                f"Appending {n} tokens would make {self.tokens_appended + n:,} tokens in {self.path}, "
                f"more than the {self.n_tokens:,} planned; open the store with the real token count."
            )
        sources = {field_key(f.name): tensors[f.name] for f in self.fields}
        sources |= {meta_key(k): meta[k] for k in META_FIELDS}
        offset = 0
        with torch.inference_mode(False), torch.no_grad():  # a plain buffer, whatever mode the caller is in
            while offset < n:
                buffer = self._ensure_buffer()
                capacity = min(self.tokens_per_shard, self.n_tokens - self._queued)
                take = min(capacity - self._filled, n - offset)
                for key, source in sources.items():
                    buffer[key][self._filled : self._filled + take].copy_(source[offset : offset + take])
                self._filled += take
                offset += take
                if self._filled == capacity:
                    self._flush()

    def close(self) -> None:
        """Write the last partial shard, mark the store complete and release it.

        Closing before `n_tokens` tokens were appended writes what there is, leaves the store
        resumable and raises, since a store shorter than planned is not complete.
        """
        if not self._lock.held:
            return
        try:
            self._flush()
            self._wait()
            if self.tokens_done < self.n_tokens:
                raise WorkbenchError(
                    f"The store {self.path} was closed after {self.tokens_done:,} of the {self.n_tokens:,} "
                    "planned tokens, so it is not complete. Resume the capture (--resume) to add the rest."
                )
            if self._manifest["status"] != "complete":
                self._manifest["status"] = "complete"
                self._manifest["completed"] = now()
                write_manifest(self.path, self._manifest)
        finally:
            self._buffer = None
            self._pool.shutdown(wait=True)
            self._lock.release()

    def abort(self) -> None:
        """Release the store after an error: buffered tokens are dropped, the store stays resumable."""
        with contextlib.suppress(Exception):  # a shard already in flight may finish; it is whole or absent
            self._wait()
        self._pool.shutdown(wait=True)
        self._buffer = None
        self._filled = 0
        self._lock.release()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _check_batch(self, tensors: dict[str, torch.Tensor], meta: dict[str, torch.Tensor]) -> int:
        """Refuse a malformed batch before any of it is buffered; return its token count."""
        names = {f.name for f in self.fields}
        for given, wanted, what in (
            (set(tensors), names, "fields"),
            (set(meta), set(META_FIELDS), "meta keys"),
        ):
            if given != wanted:
                raise WorkbenchError(
                    f"Store append got the wrong {what}: missing {sorted(wanted - given)}, "
                    f"unexpected {sorted(given - wanted)}; give exactly {sorted(wanted)}."
                )
        sizes: dict[str, int] = {}
        for spec in self.fields:
            t = tensors[spec.name]
            if (
                not isinstance(t, torch.Tensor)
                or t.dim() != 1 + len(spec.shape)
                or tuple(t.shape[1:]) != spec.shape
            ):
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise WorkbenchError(
                    f"Field {spec.name} must be [n, {', '.join(map(str, spec.shape))}]; got {got}."
                )
            _check_dtype(spec.name, t, spec.torch_dtype)
            sizes[spec.name] = t.shape[0]
        for k in META_FIELDS:
            t = meta[k]
            if not isinstance(t, torch.Tensor) or t.dim() != 1:
                raise WorkbenchError(f"Metadata {k!r} must be a 1-D tensor [n], one value per token.")
            _check_dtype(k, t, DTYPES[META_DTYPE])
            sizes[k] = t.shape[0]
        if len(set(sizes.values())) != 1:
            raise WorkbenchError(
                f"Every field and metadata key needs the same number of tokens; got {sizes}."
            )
        return next(iter(sizes.values()))

    def _ensure_buffer(self) -> dict[str, torch.Tensor]:
        if self._buffer is None:
            rows = min(self.tokens_per_shard, self.n_tokens - self._queued)
            self._buffer = {
                field_key(f.name): torch.empty((rows, *f.shape), dtype=f.torch_dtype) for f in self.fields
            }
            self._buffer |= {meta_key(k): torch.empty(rows, dtype=DTYPES[META_DTYPE]) for k in META_FIELDS}
        return self._buffer

    def wait_durable(self) -> None:
        """Block until every full shard handed over so far is on disk and listed (tokens_done is final)."""
        self._wait()

    def _wait(self) -> None:
        """Wait for the shard in flight; re-raise its error here, in the caller's thread."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _flush(self) -> None:
        """Hand the buffered tokens to the shard writer thread (after the previous shard is durable)."""
        if self._filled == 0 or self._buffer is None:
            return
        self._wait()  # keeps shards in order and at most two in memory
        start, stop = self._queued, self._queued + self._filled
        tensors = {k: v[: self._filled] for k, v in self._buffer.items()}
        self._buffer, self._filled, self._queued = None, 0, stop
        self._pending = self._pool.submit(self._write_shard, tensors, start, stop)

    def _write_shard(self, tensors: dict[str, torch.Tensor], start: int, stop: int) -> None:
        """Write one shard durably, then list it in the manifest (runs in the writer thread)."""
        name = shard_name(len(self._manifest["shards"]))
        tmp = self.path / temp_name(name)
        base = self._manifest.get(
            "base_token", 0
        )  # whole-store positions, for a range of a coordinated store
        header = json.dumps({"format": STORE_FORMAT, "start": base + start, "stop": base + stop})
        try:
            size, digest = write_shard(tmp, tensors, {SHARD_METADATA_KEY: header})
            tmp.replace(self.path / name)
            fsync_dir(self.path)
        except OSError as e:  # disk full, folder gone, ...: the listed shards stay good
            raise WorkbenchError(
                f"Writing shard {name} into {self.path} failed ({e}). The {self.tokens_done:,} tokens "
                "already listed are safe: fix the cause (e.g. free disk space) and resume with --resume."
            ) from e
        entry = {"file": name, "start": start, "stop": stop, "bytes": size, "xxh3_128": digest}
        self._manifest["shards"].append(entry)
        self._manifest["tokens_written"] = stop
        write_manifest(self.path, self._manifest)
        self.tokens_done = stop


def _check_dtype(name: str, t: torch.Tensor, stored: torch.dtype) -> None:
    """Allow float->float and int->int (in range) conversion; refuse anything that changes meaning."""
    if t.dtype == torch.bool or t.is_complex() or t.is_floating_point() != stored.is_floating_point:
        raise WorkbenchError(
            f"{name}: a {t.dtype} tensor cannot be stored as {stored}; "
            f"give {'floating-point' if stored.is_floating_point else 'integer'} values."
        )
    if not stored.is_floating_point and t.dtype.itemsize > stored.itemsize and t.numel():
        info = torch.iinfo(stored)
        low, high = int(t.min()), int(t.max())
        if low < info.min or high > info.max:
            raise WorkbenchError(
                f"{name}: values {low}..{high} do not fit the stored {stored}; store a wider int."
            )
