"""StoreReader: paired, memory-bounded batches and random access over a store's shards.

Every shard read checks the file's size against the manifest (one stat, so a truncated or missing
shard is never read) and its header against the fields. The first time a reader opens a shard it also
checks the shard's xxh3-128 checksum, which catches changed bytes anywhere (one pass over the file, at
memory speed once it is in the page cache; each reader checks each shard once). `verify=False` opts
out explicitly; `verify()` checks every shard at once and lists the bad ones.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from workbench.errors import WorkbenchError
from workbench.store.format import (
    DTYPES,
    MANIFEST,
    META_DTYPE,
    META_FIELDS,
    SAFETENSORS_DTYPES,
    SHARD_METADATA_KEY,
    FieldSpec,
    check_manifest,
    checksum_file,
    field_key,
    load_manifest,
    meta_key,
    size_problem,
)
from workbench.store.ranges import store_location
from workbench.store.remote import Remote, is_remote, read_cache

BLOCKS_PER_SHARD = 16  # shuffle granularity: a batch mixes tokens from ~16 random places in the store


class StoreReader:
    """Reads a store folder or URL; a store still being written reads as the shards durable so far.

    A store on object storage (`s3://…`) is read through a local `cache` folder (default: one per store
    URL and capture under the workbench cache), each shard downloaded the first time it is read.

    `verify` (default True): check each shard's checksum when this reader first opens it, and refuse a
    changed shard. `verify=False` skips that (the size and header checks still run on every read).
    """

    def __init__(self, path: str | Path, verify: bool = True, cache: str | Path | None = None) -> None:
        self.location = str(path)  # as given: a folder, or an object-storage URL
        self._remote = Remote(self.location) if is_remote(path) else None
        if self._remote is None:
            self.path = store_location(path)  # a folder, or a file:// URL
            self.manifest: dict[str, Any] = load_manifest(self.path)
        else:  # shards are downloaded into `cache` (a folder per store and capture) as they are first read
            manifest = self._remote.read_json(MANIFEST)
            if manifest is None:
                raise WorkbenchError(
                    f"{self.location} is not an activation store: it has no {MANIFEST}. Give the URL a "
                    "capture wrote into (workbench capture --store URL)."
                )
            self.manifest = check_manifest(manifest, f"{self._remote.url}/{MANIFEST}")
            created = f"{self._remote.url}#{self.manifest['created']}"
            self.path = Path(cache).expanduser() if cache is not None else read_cache(created)
        self.fields: dict[str, FieldSpec] = {
            f.name: f for f in (FieldSpec.from_json(d) for d in self.manifest["fields"])
        }
        self.shards: list[dict[str, Any]] = list(self.manifest["shards"])
        self.n_tokens: int = self.manifest["tokens_written"]
        self.complete: bool = self.manifest["status"] == "complete"
        self._base = int(self.manifest.get("base_token", 0))  # a range of a coordinated store, read alone
        self._starts = torch.tensor([s["start"] for s in self.shards], dtype=torch.int64)  # [n_shards]
        self._verify = bool(verify)
        self._verified: set[int] = set()  # shards whose checksum this reader has checked

    def __len__(self) -> int:
        return self.n_tokens

    def verify(self) -> list[str]:
        """File names of shards that are missing, truncated or changed (checksum); [] when all are good."""
        return list(self.damage())

    def damage(self) -> dict[str, str]:
        """Every shard that is missing, truncated or changed (checksum), with what is wrong with it."""
        problems = {}
        for i, entry in enumerate(self.shards):
            problem = self._size_problem(i) or self._checksum_problem(i)
            if problem:
                problems[entry["file"]] = problem
        return problems

    def iter_batches(
        self, fields: list[str], batch_size: int, shuffle: bool = False, seed: int = 0
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Batches {field: [b, *shape], meta key: [b]}, every field row-aligned; only the last is short.

        In order, a batch is consecutive tokens. Shuffled, it is a bounded two-level shuffle: the
        store is cut into blocks of 1/16 shard, the block order is permuted over the whole store, and
        tokens are permuted within groups of about one shard of blocks. Every token comes exactly once
        per pass, a batch mixes ~16 distant parts of the store, and memory stays about one shard of the
        requested fields (plus one batch).
        """
        keys = self._keys(fields)
        if batch_size <= 0:
            raise WorkbenchError(f"batch_size must be positive, got {batch_size}.")
        generator = torch.Generator().manual_seed(seed)
        chunks: list[dict[str, torch.Tensor]] = []  # read but not yet yielded, fewer than a batch + a group
        pending = 0
        for group in self._groups(shuffle, generator):
            data = self._read_blocks(group, keys)
            rows = next(iter(data.values())).shape[0]
            if shuffle:
                order = torch.randperm(rows, generator=generator)  # [rows]
                for k in data:  # one key at a time, so only one extra field copy is alive
                    data[k] = data[k][order]
            chunks.append(data)
            pending += rows
            if pending < batch_size:
                continue
            merged, chunks, data = _concat(chunks), [], {}
            full = pending - pending % batch_size
            for lo in range(0, full, batch_size):  # clones: a kept batch must not pin a whole shard
                yield {name: merged[k][lo : lo + batch_size].clone() for name, k in keys.items()}
            chunks = [{k: v[full:].clone() for k, v in merged.items()}] if full < pending else []
            pending -= full
        if pending:
            merged = _concat(chunks)
            yield {name: merged[k] for name, k in keys.items()}

    def read(
        self, index: int | slice | torch.Tensor, fields: list[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """Tokens by store index: every field (or `fields`) plus the metadata, in the order asked.

        An int gives one token's values ([*shape]); a slice, index list or bool mask gives [k, *shape].
        Only the row span a shard contributes is read from it.
        """
        keys = self._keys(list(self.fields) if fields is None else fields)
        idx, scalar = self._indices(index)  # [k]
        specs = {field_key(f.name): (f.shape, f.torch_dtype) for f in self.fields.values()}
        specs |= {meta_key(m): ((), DTYPES[META_DTYPE]) for m in META_FIELDS}
        out = {k: torch.empty((len(idx), *specs[k][0]), dtype=specs[k][1]) for k in keys.values()}
        shard_of = torch.searchsorted(self._starts, idx, right=True) - 1  # [k]
        for i in shard_of.unique().tolist():
            rows = (shard_of == i).nonzero().squeeze(1)
            local = idx[rows] - self.shards[i]["start"]
            lo, hi = int(local.min()), int(local.max()) + 1
            with self._open(i, list(keys.values())) as handle:
                for k in keys.values():
                    out[k][rows] = handle.get_slice(k)[lo:hi][local - lo]
        return {name: out[k][0] if scalar else out[k] for name, k in keys.items()}

    def __getitem__(self, index: int | slice | torch.Tensor) -> dict[str, torch.Tensor]:
        return self.read(index)

    def _keys(self, fields: list[str]) -> dict[str, str]:
        """Output name -> shard tensor name, for the requested fields plus the metadata."""
        if isinstance(fields, str):
            fields = [fields]
        for name in fields:
            if name not in self.fields:
                near = difflib.get_close_matches(name, list(self.fields), n=3, cutoff=0.5)
                hint = f"did you mean {', '.join(near)}?" if near else f"it holds {', '.join(self.fields)}."
                raise WorkbenchError(f"The store {self.location} has no field {name!r}; {hint}")
        return {n: field_key(n) for n in fields} | {m: meta_key(m) for m in META_FIELDS}

    def _indices(self, index: int | slice | torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Token indices as a 1-D int64 tensor (negative ones wrapped), and whether one int was given."""
        n = self.n_tokens
        if isinstance(index, slice):
            return torch.arange(*index.indices(n), dtype=torch.int64), False
        scalar = isinstance(index, int) and not isinstance(index, bool)
        idx = torch.as_tensor(index)
        if idx.dtype == torch.bool:
            if idx.shape != (n,):
                raise IndexError(f"a boolean mask over the store needs shape ({n},), got {tuple(idx.shape)}")
            return idx.nonzero().squeeze(1), False
        if idx.is_floating_point() or idx.dim() > 1:
            raise IndexError(f"index the store with an int, a slice or a 1-D integer tensor, not {index!r}")
        scalar = scalar or idx.dim() == 0
        idx = idx.reshape(-1).to(torch.int64)
        if len(idx) and (int(idx.min()) < -n or int(idx.max()) >= n):
            raise IndexError(f"token index out of range for a store of {n} tokens")
        return torch.where(idx < 0, idx + n, idx), scalar

    def _groups(self, shuffle: bool, generator: torch.Generator) -> Iterator[list[tuple[int, int, int]]]:
        """Lists of (shard, lo, hi) blocks, each list about one shard of tokens."""
        if not self.shards:
            return
        sizes = [s["stop"] - s["start"] for s in self.shards]
        if not shuffle:
            yield from ([(i, 0, n)] for i, n in enumerate(sizes))
            return
        block = math.ceil(max(sizes) / BLOCKS_PER_SHARD)
        blocks = [(i, lo, min(lo + block, n)) for i, n in enumerate(sizes) for lo in range(0, n, block)]
        group: list[tuple[int, int, int]] = []
        budget = 0
        for j in torch.randperm(len(blocks), generator=generator).tolist():
            group.append(blocks[j])
            budget += blocks[j][2] - blocks[j][1]
            if budget >= max(sizes):
                yield group
                group, budget = [], 0
        if group:
            yield group

    def _read_blocks(
        self, blocks: list[tuple[int, int, int]], keys: dict[str, str]
    ) -> dict[str, torch.Tensor]:
        """The rows of `blocks`, concatenated per shard tensor name, opening each shard once."""
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in keys.values()}
        for i in sorted({b[0] for b in blocks}):
            with self._open(i, list(parts)) as handle:
                for _, lo, hi in (b for b in blocks if b[0] == i):
                    for k in parts:
                        parts[k].append(handle.get_slice(k)[lo:hi])
        return {k: v[0] if len(v) == 1 else torch.cat(v) for k, v in parts.items()}

    @contextmanager
    def _open(self, i: int, keys: list[str]) -> Iterator[Any]:
        """Open shard `i` after checking its size, its range and the shapes/dtypes of `keys`."""
        entry = self.shards[i]
        name, rows = entry["file"], entry["stop"] - entry["start"]
        problem = self._size_problem(i)
        if problem is None and self._verify and i not in self._verified:
            problem = self._checksum_problem(i)
        if problem:
            raise WorkbenchError(f"Damaged store {self.location}: shard {name} is {problem}. {_REDO}")
        try:
            handle = safe_open(self.path / name, framework="pt")
            header = json.loads((handle.metadata() or {}).get(SHARD_METADATA_KEY, "{}"))
            if (header.get("start"), header.get("stop")) != (
                self._base + entry["start"],
                self._base + entry["stop"],
            ):
                raise ValueError(f"it holds tokens {header.get('start')}..{header.get('stop')}")
            for k in keys:
                want_shape, want_dtype = self._layout(k, rows)
                got = handle.get_slice(k)
                if got.get_shape() != want_shape or got.get_dtype() != want_dtype:
                    raise ValueError(
                        f"{k} is {got.get_dtype()} {got.get_shape()}, not {want_dtype} {want_shape}"
                    )
        except Exception as e:  # safetensors raises its own error types for bad headers
            raise WorkbenchError(
                f"Damaged store {self.location}: shard {name} is unreadable ({e}). {_REDO}"
            ) from e
        try:
            yield handle
        finally:
            handle.__exit__(None, None, None)  # unmap now rather than at garbage collection

    def _layout(self, key: str, rows: int) -> tuple[list[int], str]:
        kind, name = key.split("/", 1)
        if kind == "meta":
            return [rows], SAFETENSORS_DTYPES[META_DTYPE]
        spec = self.fields[name]
        return [rows, *spec.shape], SAFETENSORS_DTYPES[spec.dtype]

    def _size_problem(self, i: int) -> str | None:
        """Why shard `i` cannot be read as listed (a stat); a remote store's shard is downloaded first,
        unless the cache already holds all of its bytes."""
        entry = self.shards[i]
        if self._remote is not None and size_problem(self.path, entry) is not None:
            try:
                self._remote.download(entry["file"], self.path / entry["file"])
            except FileNotFoundError:
                return f"missing from {self._remote.url}"
        return size_problem(self.path, entry)

    def _checksum_problem(self, i: int) -> str | None:
        """Hash shard `i` (a whole pass over the file); remember it when it matches the manifest."""
        entry = self.shards[i]
        try:
            digest = checksum_file(self.path / entry["file"])
        except FileNotFoundError:
            return "missing"
        if digest != entry["xxh3_128"]:
            return "changed since it was written (checksum mismatch)"
        self._verified.add(i)
        return None


def _concat(chunks: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Row-concatenate chunks (one copy, however many chunks a large batch spans)."""
    if len(chunks) == 1:
        return chunks[0]
    return {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}


_REDO = (
    "Its values cannot be trusted, and --resume cannot repair a listed shard: re-run the capture into a "
    "new folder. `workbench inspect DIR --verify` (or StoreReader.verify()) lists every bad shard."
)


def inspect_store(path: str | Path, verify: bool = False) -> dict[str, Any]:
    """A summary of a store: tokens, completeness, fields ("hooks"), shard count and bytes on disk.

    With `verify`, every shard's checksum is checked: "verified" is True when all are good, False when
    any is bad, and "bad_shards" / "damage" name them (without `verify`, "verified" is None: unchecked).
    """
    reader = StoreReader(path)
    summary: dict[str, Any] = {
        "tokens": reader.n_tokens,
        "planned_tokens": reader.manifest["n_tokens"],
        "complete": reader.complete,
        "hooks": {f.name: {"shape": list(f.shape), "dtype": f.dtype} for f in reader.fields.values()},
        "shards": len(reader.shards),
        "bytes": sum(s["bytes"] for s in reader.shards),
        "verified": None,
    }
    if verify:
        damage = reader.damage()
        summary |= {"verified": not damage, "bad_shards": list(damage), "damage": damage}
    return summary
