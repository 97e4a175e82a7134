"""What a store is on disk: field specs, file names, the manifest, and the shard checks both sides share."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import xxhash

from workbench.errors import WorkbenchError

STORE_FORMAT = "workbench-store/1"
MANIFEST = "store.json"
LOCK = "store.lock"
META_FIELDS = ("token", "doc", "domain", "position", "window")
META_DTYPE = "int64"  # 40 bytes a token for all five: small next to activations, and never wraps
SHARD_METADATA_KEY = "workbench-store"  # one key only: safetensors writes several in random order

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
}
FLOAT_DTYPES = {name: dtype for name, dtype in DTYPES.items() if dtype.is_floating_point}  # probe values
SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64"}
SAFETENSORS_DTYPES |= {"int32": "I32", "int16": "I16"}


@dataclass(frozen=True)
class FieldSpec:
    """One stored stream: `shape` is per token (no token dimension); `dtype` is how it is stored."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))  # JSON gives lists
        if not isinstance(self.name, str) or not self.name:
            raise WorkbenchError(f"A store field needs a non-empty name, got {self.name!r}.")
        if any(d <= 0 for d in self.shape):
            raise WorkbenchError(f"Field {self.name}: shape {self.shape} must have positive sizes.")
        if self.dtype not in DTYPES:
            raise WorkbenchError(
                f"Field {self.name}: dtype {self.dtype!r} cannot be stored; use one of {', '.join(DTYPES)}."
            )

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def bytes_per_token(self) -> int:
        return math.prod(self.shape) * self.torch_dtype.itemsize

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FieldSpec:
        return cls(data["name"], tuple(data["shape"]), data["dtype"])


def field_key(name: str) -> str:
    """Tensor name inside a shard; the prefixes keep fields and metadata apart whatever the names."""
    return f"field/{name}"


def meta_key(name: str) -> str:
    return f"meta/{name}"


def estimate_bytes(fields: list[FieldSpec], n_tokens: int) -> int:
    """Bytes of shard data for `n_tokens` tokens: every field plus the per-token metadata, no headers."""
    per_token = sum(f.bytes_per_token for f in fields) + len(META_FIELDS) * DTYPES[META_DTYPE].itemsize
    return per_token * n_tokens


def overhead_bytes(fields: list[FieldSpec], n_shards: int) -> int:
    """A generous bound on what `estimate_bytes` leaves out: shard headers and the manifest."""
    return 65536 + n_shards * (1024 + 160 * (len(fields) + len(META_FIELDS)))


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def temp_name(name: str) -> str:
    return f".{name}.tmp"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_fields(fields: list[FieldSpec]) -> list[FieldSpec]:
    """The fields as a list, refusing duplicates (two streams would overwrite each other)."""
    fields = list(fields)
    if not fields:
        raise WorkbenchError("A store needs at least one field to store.")
    names = [f.name for f in fields]
    clash = sorted(set(names) & set(META_FIELDS))
    if clash:
        raise WorkbenchError(f"Field names {clash} are reserved for per-token metadata; rename those fields.")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise WorkbenchError(f"Store fields must have distinct names; repeated: {', '.join(dupes)}.")
    return fields


def load_manifest(folder: Path) -> dict[str, Any]:
    """Read and sanity-check `store.json`: known format, contiguous shards from token 0."""
    path = folder / MANIFEST
    if not path.is_file():
        raise WorkbenchError(
            f"{folder} is not an activation store: it has no {MANIFEST}. "
            "Give the folder a capture wrote into (workbench capture --out FOLDER)."
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise WorkbenchError(f"{path} is unreadable ({e}); the store cannot be used, re-capture it.") from e
    return check_manifest(manifest, path)


def check_manifest(manifest: Any, path: Path | str) -> dict[str, Any]:
    """`manifest` (read from `path`) after checking it: known format, contiguous shards from token 0."""
    fmt = manifest.get("format") if isinstance(manifest, dict) else None
    if fmt != STORE_FORMAT:
        raise WorkbenchError(
            f"{path} has format {fmt!r}, not {STORE_FORMAT!r}; "
            "open it with the workbench version that wrote it, or re-capture it."
        )
    try:
        expected = 0
        for entry in manifest["shards"]:
            if entry["start"] != expected or entry["stop"] <= entry["start"]:
                raise WorkbenchError(
                    f"{path} lists shard {entry['file']} out of order; re-capture the store."
                )
            expected = entry["stop"]
        if manifest["tokens_written"] != expected:
            raise WorkbenchError(
                f"{path} says {manifest['tokens_written']} tokens; its shards hold {expected}."
            )
        for spec in manifest["fields"]:
            FieldSpec.from_json(spec)
        if manifest["status"] not in ("writing", "complete") or manifest["n_tokens"] < expected:
            raise WorkbenchError(f"{path} has a bad status or token count; re-capture the store.")
    except (KeyError, TypeError) as e:
        raise WorkbenchError(
            f"{path} lacks a valid entry ({e!r}); the store cannot be used, re-capture it."
        ) from e
    return manifest


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Replace the manifest atomically and durably: temp file, fsync, rename, fsync the folder.

    Like `workbench.runs.write_json` plus the fsyncs (a manifest must be on disk before the shards it
    lists count as done), and without importing workbench.runs, which pulls in altair (~1.5 s).
    """
    manifest["updated"] = now()
    path = folder / MANIFEST
    tmp = folder / temp_name(MANIFEST)
    with open(tmp, "w") as f:
        f.write(json.dumps(manifest, indent=2, allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    fsync_dir(folder)


def fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX only; Windows cannot open a folder for fsync)."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checksum_file(path: Path, fsync: bool = False) -> str:
    """xxh3-128 of a file: catches damage anywhere at memory speed (sha256 cost a third of write time)."""
    digest = xxhash.xxh3_128()
    with open(path, "r+b" if fsync else "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
        if fsync:
            os.fsync(f.fileno())
    return digest.hexdigest()


def size_problem(folder: Path, entry: dict[str, Any]) -> str | None:
    """Why a listed shard cannot be read as listed (missing, truncated, grown), or None; one stat()."""
    path = folder / entry["file"]
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    if size < entry["bytes"]:
        return f"truncated ({size:,} of {entry['bytes']:,} bytes)"
    if size > entry["bytes"]:
        return f"larger than written ({size:,} bytes, not {entry['bytes']:,})"
    return None
