"""The runs index: run folders under the runs root read into rows for the panel, filtered and sorted.

A row is what the runs list shows of one folder: id, result kinds, model, command, status (as
`workbench.runs.run_status` reads it), dates, a headline of figures, progress and an error. Any folder
that holds a run file is listed; one that cannot be read (a half-written or hand-damaged manifest, a
"complete" run without readable results, a file linked from outside the root) is a row with status
"unreadable" and the reason, never a broken listing. Results are read back (and their headlines taken)
once per change of the folder's files.
"""

from __future__ import annotations

import json
import shlex
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError
from workbench.lab.paths import Forbidden, NotFound, inside_file, run_folder, run_id
from workbench.lab.progress import PROGRESS, read_progress

MANIFEST, RESULTS, HEARTBEAT = "manifest.json", "results.json", "heartbeat.json"
# A folder holding any of these is a run folder (possibly half-written); others are searched for runs.
RUN_FILES = (MANIFEST, RESULTS, HEARTBEAT, PROGRESS, f".{MANIFEST}.tmp")
MAX_DEPTH = 3  # run folders are found this many folders deep under the root (e.g. runs/sweep/a)
STATUSES = ("running", "complete", "failed", "interrupted", "unreadable")
SORTS = ("created", "kind", "status", "model")


class NotReady(WorkbenchError):
    """The run has no results to show yet (running, failed, interrupted): HTTP 409."""


def find_run_folders(root: Path) -> list[Path]:
    """Every run folder under `root`, MAX_DEPTH deep at most; hidden folders and links are not followed."""
    found: list[Path] = []

    def walk(folder: Path, depth: int) -> None:
        try:
            children = sorted(folder.iterdir())
        except OSError:
            return
        for child in children:
            if child.name.startswith(".") or child.is_symlink() or not child.is_dir():
                continue
            if any((child / name).exists() or (child / name).is_symlink() for name in RUN_FILES):
                found.append(child)
            elif depth < MAX_DEPTH:
                walk(child, depth + 1)

    if root.is_dir():
        walk(root, 1)
    return found


def _model_of(manifest: dict) -> str | None:
    """The model's name: the manifest's (once results are saved), else --model of the command line."""
    model = manifest.get("model")
    if isinstance(model, dict) and isinstance(model.get("name"), str):
        return model["name"]
    command = manifest.get("command")
    if not isinstance(command, str):
        return None
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    for i, word in enumerate(words):
        if word == "--model" and i + 1 < len(words):
            return words[i + 1]
        if word.startswith("--model="):
            return word.split("=", 1)[1]
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _read_manifest(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise WorkbenchError(
            f"{MANIFEST} is unreadable ({err}); the run folder is damaged or half-written"
        ) from err
    if not isinstance(data, dict):
        raise WorkbenchError(f"{MANIFEST} is not a run manifest (not a JSON object)")
    return data


def merged_headline(results: list) -> dict[str, int | float | str]:
    """The figures of a run's results, the main (last) result's first; a name already taken is skipped."""
    figures: dict[str, int | float | str] = {}
    for result in reversed(results):
        for name, value in result.headline().items():
            figures.setdefault(name, value)
    return figures


class RunsIndex:
    """Rows and run contents under one runs root, with results read once per change of their files."""

    def __init__(self, root: Path, keep_runs: int = 16) -> None:
        self.root, self.keep_runs = root, keep_runs
        # folder -> (files' stat, workbench.runs.Run): the latest few runs read whole (charts, reports)
        self._runs: OrderedDict[str, tuple[tuple, Any]] = OrderedDict()
        # folder -> (files' stat, kinds, headline): what the listing needs of every complete run
        self._summaries: dict[str, tuple[tuple, list[str], dict]] = {}
        self._lock = threading.Lock()  # the server reads on several threads

    # reading one folder -----------------------------------------------------------------------------
    def _checked_files(self, folder: Path) -> dict[str, Path | None]:
        """The folder's run files that exist, each confined to the root (Forbidden otherwise)."""
        return {
            name: inside_file(self.root, folder, name) for name in (MANIFEST, RESULTS, HEARTBEAT, PROGRESS)
        }

    def _stamp(self, files: dict[str, Path | None]) -> tuple:
        stats = []
        for name in (MANIFEST, RESULTS):
            path = files[name]
            stat = path.stat() if path is not None else None
            stats.append((stat.st_mtime_ns, stat.st_size, stat.st_ino) if stat else None)
        return tuple(stats)

    def _read_run(self, folder: Path, files: dict[str, Path | None]):
        """The complete run in `folder` (workbench.runs.Run), read again only when its files changed."""
        from workbench.runs import read_run  # results and their charts: imported on first use

        key, stamp = str(folder), self._stamp(files)
        with self._lock:
            cached = self._runs.get(key)
            if cached is not None and cached[0] == stamp:
                self._runs.move_to_end(key)
                return cached[1]
        run = read_run(folder)
        with self._lock:
            self._runs[key] = (stamp, run)
            while len(self._runs) > self.keep_runs:
                self._runs.popitem(last=False)
        return run

    def _summary(self, folder: Path, files: dict[str, Path | None]) -> tuple[list[str], dict]:
        """(kinds, headline) of the complete run in `folder`, read again only when its files changed."""
        key, stamp = str(folder), self._stamp(files)
        cached = self._summaries.get(key)
        if cached is not None and cached[0] == stamp:
            return cached[1], cached[2]
        run = self._read_run(folder, files)
        kinds, headline = [r.kind for r in run.results], merged_headline(run.results)
        self._summaries[key] = (stamp, kinds, headline)
        return kinds, headline

    def row(self, folder: Path) -> dict:
        """The listing's row of `folder` (status "unreadable" with the reason when it cannot be read)."""
        from workbench.runs import run_status

        row: dict[str, Any] = {
            "id": run_id(self.root, folder),
            "kinds": [],
            "model": None,
            "command": None,
            "status": "unreadable",
            "created": None,
            "finished": None,
            "headline": {},
            "progress": None,
            "error": None,
        }
        try:
            files = self._checked_files(folder)
            row["progress"] = read_progress(files[PROGRESS])
            if files[MANIFEST] is None:
                raise WorkbenchError(f"{MANIFEST} is missing: the run folder is half-written or damaged")
            manifest = _read_manifest(files[MANIFEST])
            results = manifest.get("results")
            row["kinds"] = (
                [r["kind"] for r in results if isinstance(r, dict) and isinstance(r.get("kind"), str)]
                if isinstance(results, list)
                else []
            )
            row["model"] = _model_of(manifest)
            row["command"] = _text(manifest.get("command"))
            row["created"] = _text(manifest.get("created"))
            row["finished"] = _text(manifest.get("finished"))
            status = run_status(folder)
            if status not in STATUSES:
                raise WorkbenchError(f"{MANIFEST} has an unknown status {status!r}")
            if status == "complete":
                if files[RESULTS] is None:
                    raise WorkbenchError(
                        f"{MANIFEST} says complete but {RESULTS} is missing: the folder is damaged"
                    )
                row["kinds"], row["headline"] = self._summary(folder, files)
            else:
                row["error"] = _text(manifest.get("error"))
            row["status"] = status
        except (
            Exception
        ) as err:  # whatever a damaged folder (or a broken result kind) raises, one row says it
            row["status"], row["error"] = "unreadable", str(err) or type(err).__name__
        return row

    # the endpoints' reads ---------------------------------------------------------------------------
    def rows(
        self,
        kind: str | None = None,
        status: str | None = None,
        q: str | None = None,
        sort: str | None = None,
    ) -> list[dict]:
        """Every run's row, filtered (kind, status, text anywhere in id/command/model/kinds) and sorted."""
        folders = find_run_folders(self.root)
        gone = set(self._summaries) - {str(folder) for folder in folders}
        for key in gone:  # folders deleted since the last listing
            self._summaries.pop(key, None)
        rows = [self.row(folder) for folder in folders]
        return sort_rows(filter_rows(rows, kind, status, q), sort)

    def folder(self, run: str) -> Path:
        """The folder of run id `run`, which must be a run's: NotFound as paths.run_folder, Forbidden when
        the folder or any of its run files resolves outside the root."""
        folder = run_folder(self.root, run)
        if not any((folder / name).exists() or (folder / name).is_symlink() for name in RUN_FILES):
            raise NotFound(f"{run!r} is a folder under the runs root but not a run folder")
        self._checked_files(folder)
        return folder

    def detail(self, run: str) -> dict:
        """The row, the manifest and the result dictionaries (empty until the run is complete)."""
        folder = self.folder(run)
        row = self.row(folder)
        files = self._checked_files(folder)
        manifest: dict = {}
        if files[MANIFEST] is not None:
            try:
                manifest = _read_manifest(files[MANIFEST])
            except WorkbenchError:
                manifest = {}
        results: list = []
        if row["status"] == "complete":
            results = [r.to_dict() for r in self._read_run(folder, files).results]
        return {"row": row, "manifest": manifest, "results": results}

    def complete_run(self, run: str):
        """The complete run `run` (workbench.runs.Run) with its row; NotReady while it has no results."""
        folder = self.folder(run)
        row = self.row(folder)
        if row["status"] != "complete":
            reason = f": {row['error']}" if row["error"] else ""
            raise NotReady(f"run {run!r} is {row['status']}{reason}; it has no results to show yet")
        return self._read_run(folder, self._checked_files(folder)), row

    def status(self, run: str) -> tuple[str, dict | None]:
        """(status, progress) of run `run`, cheap enough to poll every second."""
        from workbench.runs import run_status

        folder = self.folder(run)
        try:
            files = self._checked_files(folder)
            status = run_status(folder) if files[MANIFEST] is not None else "unreadable"
        except (WorkbenchError, Forbidden, OSError):
            return "unreadable", None
        return (status if status in STATUSES else "unreadable"), read_progress(files[PROGRESS])


def filter_rows(rows: list[dict], kind: str | None, status: str | None, q: str | None) -> list[dict]:
    """Rows holding a result of `kind`, with `status`, and containing `q` (case-insensitive) in their id,
    command, model or kinds; an empty or missing filter keeps every row."""
    text = (q or "").strip().lower()

    def keep(row: dict) -> bool:
        if kind and kind not in row["kinds"]:
            return False
        if status and row["status"] != status:
            return False
        if text:
            haystack = " ".join([row["id"], row["command"] or "", row["model"] or "", *row["kinds"]])
            return text in haystack.lower()
        return True

    return [row for row in rows if keep(row)]


def _sort_key(name: str) -> Callable[[dict], Any]:
    if name == "kind":
        return lambda row: ",".join(reversed(row["kinds"])) or None  # the main (last) kind first
    return lambda row: row[name]


def sort_rows(rows: list[dict], sort: str | None) -> list[dict]:
    """Rows ordered by created (default: newest first), kind, status or model; '-' reverses. Rows
    without the value go last either way. ValueError for any other order."""
    sort = sort or "-created"
    name = sort.removeprefix("-")
    if name not in SORTS:
        raise ValueError(f"unknown sort {sort!r}: use one of {', '.join(SORTS)}, each optionally with '-'")
    key = _sort_key(name)
    rows = sorted(rows, key=lambda row: row["id"])  # ties stay in id order (a stable sort, also reversed)
    known = [row for row in rows if key(row) is not None]
    unknown = [row for row in rows if key(row) is None]
    return sorted(known, key=key, reverse=sort.startswith("-")) + unknown
