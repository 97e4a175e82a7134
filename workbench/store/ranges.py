"""A coordinated store: one store filled by several writers at once, each writing its own token range.

On disk: `store.json`, the coordinating manifest; `store.lock`, held by the coordinator for the whole
capture; and `ranges/NNNNN/`, one store per range (a `StoreWriter` with `base_token`), which one worker
writes and resumes on its own. Uncoordinated writers are refused: a plain `StoreWriter` will not open
a coordinated store, and a second coordinator finds the lock taken.

The coordinating manifest is an ordinary store manifest plus `ranges` (each range's tokens, folder and
status) and `tokens_per_shard`. Its `shards` list every shard of the complete ranges that form a prefix
of the store, by path (`ranges/00001/shard-00000.safetensors`) and whole-store position, so a reader
sees one store: the complete prefix while the capture runs, all of it once every range is complete.

Ranges are cut on the shard grid of a one-writer capture (whole shards, which are whole batches), so
every shard holds exactly the tensors, header and checksum that a one-writer capture writes for it.

A store on object storage (`s3://…`, `workbench.store.remote`) keeps its coordinating manifest in a
local staging folder, uploaded after every change; each range is written into its worker's own staging
folder and uploaded by that worker once complete, before the coordinator records it.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError
from workbench.store.format import (
    LOCK,
    MANIFEST,
    FieldSpec,
    check_fields,
    load_manifest,
    now,
    size_problem,
    write_manifest,
)
from workbench.store.lock import StoreLock
from workbench.store.opening import check_folder, new_manifest, preflight
from workbench.store.remote import Remote, is_remote, staging_folder

RANGES = "ranges"


def store_location(path: str | Path) -> Path:
    """A local store's folder from a path or a `file://` URL (a store on object storage is written through
    a staging folder instead: `Coordinator.open`, `workbench.store.remote`)."""
    text = str(path)
    if "://" not in text:
        return Path(text).expanduser()
    import fsspec

    fs, root = fsspec.core.url_to_fs(text)
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if "file" not in protocols and "local" not in protocols:
        raise WorkbenchError(
            f"{text}: only a coordinated capture (--workers) writes to {protocols[0]}://, through local "
            "staging folders; a single writer needs a local or shared POSIX filesystem (fsync, atomic "
            "rename, file locks). Add --workers 1, or write to a local path or file:// URL."
        )
    return Path(root)


def plan_ranges(n_tokens: int, tokens_per_shard: int, parts: int) -> list[tuple[int, int]]:
    """`parts` (at most one per shard) contiguous token ranges of whole shards, as even as shards allow."""
    n_shards = math.ceil(n_tokens / tokens_per_shard)
    parts = max(1, min(parts, n_shards))
    bounds = [i * n_shards // parts for i in range(parts + 1)]
    return [
        (lo * tokens_per_shard, min(hi * tokens_per_shard, n_tokens))
        for lo, hi in zip(bounds, bounds[1:], strict=False)
    ]


class Coordinator:
    """Holds a coordinated store: which ranges are pending, and the manifest that lists complete ones.

    `Coordinator.open(...)`, then for each range a worker writes `range_location(r)` (resuming what is
    there), `complete(r)` once it has, and `close()`; `release()` after an error leaves it resumable.
    """

    def __init__(
        self, folder: Path, manifest: dict[str, Any], lock: StoreLock, remote: Remote | None = None
    ) -> None:
        self.folder, self.manifest, self._lock, self.remote = folder, manifest, lock, remote

    @classmethod
    def open(
        cls,
        path: str | Path,
        fields: list[FieldSpec],
        n_tokens: int,
        info: dict[str, Any],
        tokens_per_shard: int,
        parts: int,
        resume: bool = False,
    ) -> Coordinator:
        """Start a coordinated store of `parts` ranges in `path` (a folder, file:// or object-storage URL),
        or (resume) continue the one there."""
        remote = Remote(str(path)) if is_remote(path) else None
        folder = staging_folder(remote.url) if remote else store_location(path)
        fields = check_fields(fields)
        if n_tokens <= 0 or tokens_per_shard <= 0:
            raise WorkbenchError(
                f"A store needs tokens and shard sizes > 0, got {n_tokens}, {tokens_per_shard}."
            )
        if remote is None:
            check_folder(folder, resume)
        folder.mkdir(parents=True, exist_ok=True)
        lock = StoreLock.acquire(folder)
        try:
            if remote is not None:
                _stage(remote, folder, resume)
            if resume and (folder / MANIFEST).is_file():
                manifest = _resumed(folder, fields, n_tokens, tokens_per_shard)
            else:
                manifest = new_manifest(fields, n_tokens, info)
                manifest["tokens_per_shard"] = tokens_per_shard
                manifest["ranges"] = [
                    {
                        "start": lo,
                        "stop": hi,
                        "folder": f"{RANGES}/{i:05d}",
                        "status": "pending",
                        "shards": [],
                    }
                    for i, (lo, hi) in enumerate(plan_ranges(n_tokens, tokens_per_shard, parts))
                ]
                if remote is None:  # a remote store's ranges are staged, and checked, on their workers
                    preflight(folder, fields, n_tokens, tokens_per_shard)
            coordinator = cls(folder, manifest, lock, remote)
            coordinator._save()
        except BaseException:
            lock.release()
            raise
        return coordinator

    @property
    def location(self) -> str:
        """Where readers find the store: its folder, or its URL."""
        return self.remote.url if self.remote else str(self.folder)

    @property
    def ranges(self) -> list[dict[str, Any]]:
        return self.manifest["ranges"]

    def pending(self) -> list[int]:
        """Indices of the ranges not yet complete, in order."""
        return [i for i, r in enumerate(self.ranges) if r["status"] != "complete"]

    def range_path(self, index: int) -> Path:
        """Range `index`'s folder in a local store."""
        return self.folder / self.ranges[index]["folder"]

    def range_location(self, index: int) -> str:
        """Where range `index`'s writer puts it: its folder, or (remote) its URL."""
        rel = self.ranges[index]["folder"]
        return f"{self.remote.url}/{rel}" if self.remote else str(self.folder / rel)

    def range_staging_key(self, index: int) -> str | None:
        """(remote) What names range `index`'s staging folder on whichever worker writes it
        (`workbench.store.remote.staging_folder`): its URL and the store's creation time, so that a fresh
        capture to the same URL never resumes another capture's staged shards; None for a local store."""
        if self.remote is None:
            return None
        return f"{self.range_location(index)}#{self.manifest['created']}"

    def _range_manifest(self, index: int) -> dict[str, Any] | None:
        rel = self.ranges[index]["folder"]
        if self.remote is not None:
            return self.remote.read_json(f"{rel}/{MANIFEST}")
        path = self.folder / rel
        return load_manifest(path) if (path / MANIFEST).is_file() else None

    def range_done(self, index: int) -> bool:
        """Whether range `index`'s own store is complete (its writer finished, perhaps unrecorded)."""
        sub = self._range_manifest(index)
        return sub is not None and sub.get("status") == "complete"

    def complete(self, index: int) -> None:
        """Record range `index` as complete after checking its store, and list its shards if they now
        extend the complete prefix of the whole store."""
        entry = self.ranges[index]
        sub = self._range_manifest(index) or {"status": None}
        want = (entry["start"], entry["stop"] - entry["start"])
        if sub["status"] != "complete" or (sub.get("base_token", 0), sub["n_tokens"]) != want:
            raise WorkbenchError(
                f"Range {index} of {self.location} ({self.range_location(index)}) is not a complete store of "
                f"tokens {entry['start']:,}..{entry['stop']:,}; resume the capture (--resume) to finish it."
            )
        if [FieldSpec.from_json(d) for d in sub["fields"]] != [
            FieldSpec.from_json(d) for d in self.manifest["fields"]
        ]:
            raise WorkbenchError(f"Range {index} of {self.location} holds other fields than the store.")
        shards = []
        for shard in sub["shards"]:
            file = f"{entry['folder']}/{shard['file']}"
            shards.append(
                shard
                | {
                    "file": file,
                    "start": shard["start"] + entry["start"],
                    "stop": shard["stop"] + entry["start"],
                }
            )
            problem = self._size_problem(shards[-1])
            if problem:
                raise WorkbenchError(
                    f"Range {index} of {self.location}: shard {file} is {problem}; re-capture it."
                )
        entry.update(status="complete", completed=now(), shards=shards)
        listed = []
        for r in self.ranges:  # the complete prefix: what a reader can use now
            if r["status"] != "complete":
                break
            listed += r["shards"]
        self.manifest["shards"] = listed
        self.manifest["tokens_written"] = listed[-1]["stop"] if listed else 0
        self._save()

    def _size_problem(self, entry: dict[str, Any]) -> str | None:
        if self.remote is None:
            return size_problem(self.folder, entry)
        size = self.remote.size(entry["file"])
        if size is None:
            return "missing"
        return None if size == entry["bytes"] else f"{size:,} bytes, not {entry['bytes']:,}"

    def _save(self) -> None:
        """Write the manifest durably, and (remote) upload it: readers of the URL see it from then on."""
        write_manifest(self.folder, self.manifest)
        if self.remote is not None:
            self.remote.upload(self.folder / MANIFEST, MANIFEST)

    def close(self) -> None:
        """Mark the store complete (every range must be) and release it."""
        try:
            missing = self.pending()
            if missing:
                raise WorkbenchError(
                    f"The store {self.location} still misses ranges {missing}; resume the capture (--resume)."
                )
            self.manifest["status"] = "complete"
            self.manifest["completed"] = now()
            self._save()
        finally:
            self._lock.release()

    def release(self) -> None:
        """Let go of the store after an error; its complete ranges stay, the rest resume later."""
        self._lock.release()


def _stage(remote: Remote, folder: Path, resume: bool) -> None:
    """Make the (locked) staging folder of a remote store ready: empty for a fresh store, which the remote
    must not hold yet; holding the remote's coordinating manifest for a resumed one."""
    if not resume:
        if remote.has_files():
            raise WorkbenchError(
                f"{remote.url} is not empty. Pass --resume (resume=True) to continue the capture there, or "
                "choose a new URL."
            )
        for item in folder.iterdir():  # an earlier attempt that never uploaded anything
            if item.name != LOCK:
                shutil.rmtree(item) if item.is_dir() else item.unlink()
        return
    manifest = remote.read_json(MANIFEST)
    if manifest is not None:  # the remote is what readers see, and what every range was checked against
        write_manifest(folder, manifest)


def _resumed(folder: Path, fields: list[FieldSpec], n_tokens: int, tokens_per_shard: int) -> dict[str, Any]:
    """The coordinating manifest on disk, checked against this capture's plan."""
    manifest = load_manifest(folder)
    if "ranges" not in manifest:
        raise WorkbenchError(
            f"{folder} was written by a single writer, not by coordinated workers; resume it without "
            "--workers."
        )
    stored = [FieldSpec.from_json(d) for d in manifest["fields"]]
    plan = (stored, manifest["n_tokens"], manifest.get("tokens_per_shard"))
    if plan != (fields, n_tokens, tokens_per_shard):
        raise WorkbenchError(
            f"Cannot resume {folder}: it was started for {manifest['n_tokens']:,} tokens in shards of "
            f"{manifest.get('tokens_per_shard')} with other fields or sizes than this capture's "
            f"({n_tokens:,} tokens, shards of {tokens_per_shard}). Resume with the same settings."
        )
    manifest.setdefault("resumes", []).append(
        {
            "date": now(),
            "tokens_done": manifest["tokens_written"],
            "pending": sum(r["status"] != "complete" for r in manifest["ranges"]),
        }
    )
    return manifest
