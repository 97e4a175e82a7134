"""Run ids and the runs root: every id the browser sends resolves to a folder inside the root, or is refused.

A run id is a run folder's path relative to the runs root, '/'-separated. An id that could name anything
outside the root (an absolute path, a '..' or '.' segment, a backslash, a NUL) is refused as not found
without touching the disk; an id whose folder (or a file read from it) resolves outside the root through a
symbolic link is refused as forbidden. Nothing else in the server turns ids into paths.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath


class NotFound(LookupError):
    """No run folder by that id under the runs root (HTTP 404)."""


class Forbidden(PermissionError):
    """The id names something that resolves outside the runs root (HTTP 403)."""


def is_inside(root: Path, path: Path) -> bool:
    """Whether `path`, with every symbolic link resolved, is `root` itself or lies under it."""
    real_root = root.resolve()
    real = path.resolve()
    return real == real_root or real_root in real.parents


def check_id(run_id: str) -> PurePosixPath:
    """`run_id` as relative path segments; NotFound for an id that could leave the root."""
    if not run_id or "\\" in run_id or "\x00" in run_id or run_id.startswith("/"):
        raise NotFound(f"no run {run_id!r}: a run id is a folder path relative to the runs root")
    parts = run_id.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise NotFound(f"no run {run_id!r}: a run id has no empty, '.' or '..' segments")
    return PurePosixPath(*parts)


def run_folder(root: Path, run_id: str) -> Path:
    """The folder of `run_id` under `root`: NotFound when there is no such folder, Forbidden when it
    resolves outside the root."""
    path = root.joinpath(*check_id(run_id).parts)
    if not path.is_dir():
        raise NotFound(f"no run folder {run_id!r} under the runs root")
    if not is_inside(root, path):
        raise Forbidden(f"run {run_id!r} resolves outside the runs root")
    return path


def inside_file(root: Path, folder: Path, name: str) -> Path | None:
    """`folder`/`name` when it is a file inside the root, None when it is missing; Forbidden when a link
    takes it outside the root."""
    path = folder / name
    if not path.exists():
        return None
    if not is_inside(root, path):
        raise Forbidden(f"{name} of this run resolves outside the runs root")
    return path if path.is_file() else None


def run_id(root: Path, folder: Path) -> str:
    """The id of `folder`, a folder under `root` (no links resolved: ids follow the listing)."""
    return folder.relative_to(root).as_posix()
