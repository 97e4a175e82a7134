"""What `StoreWriter.open` settles before writing: a fresh store or a resumed one, strays, disk space."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError
from workbench.store.format import (
    LOCK,
    MANIFEST,
    META_DTYPE,
    META_FIELDS,
    STORE_FORMAT,
    FieldSpec,
    estimate_bytes,
    load_manifest,
    now,
    overhead_bytes,
    size_problem,
)

# what a killed writer can leave: a half-written shard or manifest, or a renamed shard never listed
_TEMP_FILE = re.compile(r"\.(shard-\d+\.safetensors|store\.json)\.tmp")
_SHARD_FILE = re.compile(r"shard-\d+\.safetensors")


def new_manifest(
    fields: list[FieldSpec], n_tokens: int, info: dict[str, Any], base_token: int = 0
) -> dict[str, Any]:
    manifest = {
        "format": STORE_FORMAT,
        "status": "writing",
        "created": now(),
        "updated": now(),
        "completed": None,
        "info": info,
        "fields": [f.to_json() for f in fields],
        "meta_fields": {k: META_DTYPE for k in META_FIELDS},
        "n_tokens": n_tokens,
        "tokens_written": 0,
        "shards": [],
        "resumes": [],
    }
    if base_token:  # a range of a coordinated store: shard headers hold whole-store positions
        manifest["base_token"] = base_token
    return manifest


def _strays(names: list[str], manifest: dict[str, Any] | None) -> list[str]:
    """Files a killed writer may leave: temp files, and (given a manifest) shards it never listed."""
    listed = {s["file"] for s in manifest["shards"]} if manifest else None
    return sorted(
        n
        for n in names
        if _TEMP_FILE.fullmatch(n) or (listed is not None and _SHARD_FILE.fullmatch(n) and n not in listed)
    )


def check_folder(folder: Path, resume: bool) -> None:
    """Refuse a folder this capture must not write into; cheap, so it also runs before taking the lock."""
    if not folder.is_dir():
        return
    names = [p.name for p in folder.iterdir() if p.name != LOCK]
    has_manifest = MANIFEST in names
    if not resume and names:
        what = f"{len(names)} file(s), e.g. {sorted(names)[0]}"
        if has_manifest:
            m = load_manifest(folder)
            what = f"a store with {m['tokens_written']:,} of {m['n_tokens']:,} tokens ({m['status']})"
        raise WorkbenchError(
            f"{folder} is not empty: it holds {what}. Pass --resume (resume=True) to continue the "
            "capture into it, or choose a new folder."
        )
    foreign = sorted(set(names) - set(_strays(names, None)))
    if resume and not has_manifest and foreign:
        raise WorkbenchError(
            f"Cannot resume in {folder}: it has no {MANIFEST} but holds {foreign}; choose a new folder."
        )


def prepare(
    folder: Path,
    fields: list[FieldSpec],
    n_tokens: int,
    info: dict[str, Any],
    resume: bool,
    base_token: int = 0,
) -> dict:
    """The manifest to continue from: a fresh one, or (resume) the one on disk after removing strays.

    Call with the store's lock held: removing strays is only safe when no writer is running.
    """
    check_folder(folder, resume)
    names = [p.name for p in folder.iterdir() if p.name != LOCK]
    manifest = load_manifest(folder) if MANIFEST in names else None
    if manifest is not None:
        if "ranges" in manifest:
            raise WorkbenchError(
                f"{folder} is a coordinated store: {len(manifest['ranges'])} range writers fill it under one "
                "manifest, and a single writer must not append to it. Resume it as it was started, with "
                "--workers (workbench.scale.sharded_capture)."
            )
        stored = [FieldSpec.from_json(d) for d in manifest["fields"]]
        if manifest.get("base_token", 0) != base_token:
            raise WorkbenchError(
                f"Cannot resume {folder}: it holds the range from token {manifest.get('base_token', 0):,} "
                f"of a coordinated store, not from token {base_token:,}; choose a new folder."
            )
        if stored != fields or manifest["n_tokens"] != n_tokens:
            raise WorkbenchError(
                f"Cannot resume {folder}: it was started for {manifest['n_tokens']:,} tokens of fields "
                f"{_describe(stored)}, this capture asks for {n_tokens:,} tokens of {_describe(fields)}. "
                "Resume with the same settings, or choose a new folder."
            )
        for entry in manifest["shards"]:
            problem = size_problem(folder, entry)
            if problem:
                raise WorkbenchError(
                    f"Cannot resume {folder}: its shard {entry['file']} is {problem}. "
                    "The store is damaged; re-capture into a new folder."
                )
    removed = _strays(names, manifest)
    for name in removed:
        (folder / name).unlink()
    if manifest is None:
        return new_manifest(fields, n_tokens, info, base_token)
    manifest.setdefault("resumes", []).append(
        {"date": now(), "tokens_done": manifest["tokens_written"], "removed": removed}
    )
    return manifest


def _describe(fields: list[FieldSpec]) -> str:
    return "[" + ", ".join(f"{f.name} {list(f.shape)} {f.dtype}" for f in fields) + "]"


def preflight(folder: Path, fields: list[FieldSpec], remaining: int, tokens_per_shard: int) -> None:
    """Refuse a capture the disk cannot hold, before it starts, quoting the estimate."""
    need = estimate_bytes(fields, remaining) + overhead_bytes(fields, math.ceil(remaining / tokens_per_shard))
    free = shutil.disk_usage(folder).free
    if free < need:
        raise WorkbenchError(
            f"Not enough disk for this capture: it needs about {_human(need)} ({need:,} bytes for "
            f"{remaining:,} tokens) but {folder} has {_human(free)} ({free:,} bytes) free. Free some space, "
            "capture fewer tokens or hooks, store float16/bfloat16, or write to a larger disk."
        )


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    raise AssertionError
