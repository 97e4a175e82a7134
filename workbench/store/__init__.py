"""The on-disk activation store: sharded, memory-bounded, resumable, verifiable.

A store is one folder: `store.json` (the manifest) plus `shard-00000.safetensors`, `shard-00001...`,
each holding every field and the per-token metadata for one contiguous token range.

Why safetensors shards: a reader memory-maps a shard and reads only the tensors (and row ranges) it
asks for; nothing is unpickled, so a store from elsewhere is safe to open; the header records every
tensor's shape and dtype, which the reader checks against the manifest; bfloat16 is native; and any
tool that reads safetensors (Hugging Face, numpy, Rust, JS) reads a shard without this package.

Why this manifest discipline: a shard is written under a temporary name, fsynced and renamed, and only
then listed in the manifest (itself replaced atomically), so a writer killed at any moment leaves a
store whose listed shards are whole. `StoreWriter.open(..., resume=True)` continues after them.
Each listed shard carries its byte size (checked on every read) and xxh3-128 checksum (checked the
first time a reader opens the shard, unless it was opened with verify=False).
"""

from __future__ import annotations

from workbench.store.format import META_FIELDS, STORE_FORMAT, FieldSpec, estimate_bytes
from workbench.store.reader import StoreReader, inspect_store
from workbench.store.writer import StoreWriter

__all__ = [
    "META_FIELDS",
    "STORE_FORMAT",
    "FieldSpec",
    "StoreReader",
    "StoreWriter",
    "estimate_bytes",
    "inspect_store",
]
