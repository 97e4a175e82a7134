"""Stores on object storage (`s3://`, `gs://`, `az://`, any fsspec URL that is not a local filesystem).

A store's durability rests on fsync, atomic renames and OS locks, which object stores lack. So nothing
is written there directly: each range of a coordinated store (`workbench.store.ranges`) is captured
into a local staging folder under every rule of a local store (fsync, locks, resume), and uploaded once
it is complete, its shards first and its manifest last. The coordinating manifest is uploaded after
each range it records, so a reader of the URL never sees a manifest listing a shard that is not there.

A reader downloads each shard once into a local cache folder and checks it there (size, header,
checksum) exactly as it checks a local shard.

Credentials and endpoints come from the filesystem's own configuration (for s3: the AWS environment
variables or ~/.aws, `AWS_ENDPOINT_URL` for an S3-compatible server). s3:// needs `s3fs` (the
`[scale]` extra), gs:// `gcsfs`, az:// `adlfs`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from workbench.cache import cache_dir
from workbench.errors import WorkbenchError
from workbench.store.format import MANIFEST

LOCAL_PROTOCOLS = {"file", "local"}


def is_remote(location: str | Path) -> bool:
    """Whether `location` is an fsspec URL of a filesystem that is not local (s3://, gs://, memory://…)."""
    text = str(location)
    if "://" not in text:
        return False
    protocol = text.split("://", 1)[0].split("::")[-1]
    return protocol not in LOCAL_PROTOCOLS


def _key(url: str) -> str:
    return hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


def staging_folder(url: str) -> Path:
    """The local folder where a store (or one range of it) bound for `url` is written before upload;
    `url` may carry a `#suffix` that tells apart two captures to the same URL
    (`Coordinator.range_staging_key`). It lies under this machine's workbench cache."""
    return cache_dir() / "staging" / _key(url)


def read_cache(url: str) -> Path:
    """The local folder where a reader of `url` keeps the shards it has downloaded."""
    return cache_dir() / "remote-stores" / _key(url)


class Remote:
    """A store's folder on a remote filesystem: uploads, downloads and sizes of its files by relative path."""

    def __init__(self, url: str) -> None:
        try:
            import fsspec

            self.fs, self.root = fsspec.core.url_to_fs(url)
        except ImportError as err:  # fsspec names the package that provides the protocol
            raise WorkbenchError(f"Cannot open {url}: {err}") from err
        except ValueError as err:
            raise WorkbenchError(f"Cannot open {url}: {err}") from err
        self.url = url.rstrip("/")
        self.root = self.root.rstrip("/")

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def size(self, rel: str) -> int | None:
        """Bytes of the file at `rel`, or None when there is none."""
        try:
            return int(self.fs.size(self._path(rel)))
        except FileNotFoundError:
            return None

    def has_files(self) -> bool:
        """Whether anything is stored under the store's URL."""
        try:
            return bool(self.fs.find(self.root, maxdepth=None))
        except FileNotFoundError:
            return False

    def read_json(self, rel: str) -> dict[str, Any] | None:
        """The JSON file at `rel` (fresh from the remote, never from a cache), or None when there is none."""
        self.fs.invalidate_cache(self._path(rel))
        try:
            return json.loads(self.fs.cat_file(self._path(rel)))
        except FileNotFoundError:
            return None
        except ValueError as err:
            raise WorkbenchError(f"{self.url}/{rel} is unreadable ({err}); re-capture the store.") from err

    def upload(self, local: Path, rel: str) -> None:
        """Copy the local file to `rel`, then check that the remote holds all of its bytes."""
        self.fs.put_file(str(local), self._path(rel))
        self.fs.invalidate_cache(self._path(rel))
        want, got = local.stat().st_size, self.size(rel)
        if got != want:
            raise WorkbenchError(
                f"Uploading {local} to {self.url}/{rel} left {got} of {want:,} bytes there; run the capture "
                "again with --resume to upload it again."
            )

    def upload_store(self, local: Path, rel: str = "") -> None:
        """Upload the store in `local` to `rel`: every shard its manifest lists, then the manifest."""
        manifest = json.loads((local / MANIFEST).read_text())
        prefix = f"{rel}/" if rel else ""
        for shard in manifest["shards"]:
            self.upload(local / shard["file"], prefix + shard["file"])
        self.upload(local / MANIFEST, prefix + MANIFEST)

    def download(self, rel: str, local: Path) -> None:
        """Copy `rel` to the local file through a temp file of this process's own, so a cut download never
        looks whole and readers in several processes (DDP) can share one cache."""
        local.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=local.parent, prefix=f".{local.name}.", suffix=".part")
        os.close(fd)
        try:
            self.fs.get_file(self._path(rel), tmp)
            os.replace(tmp, local)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
