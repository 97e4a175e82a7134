"""Run folders: every analysis writes manifest.json (provenance) and results.json into one folder.

Reports and the Lab panel read run folders and never recompute what one holds. Files are written
atomically, and the manifest's status stays "running" until the results are complete, so an
interrupted run is never mistaken for a finished one. A running run records its process (pid, host)
and keeps heartbeat.json fresh from a daemon thread; `run_status` reads a "running" folder whose
process is gone or whose heartbeat is stale as "interrupted" (killed, out of memory, power cut).

A command refused before it starts leaves the folder as it found it: an existing run folder is only
rewritten once the command calls `begin()` (after its own checks) or saves.

Inside its `with` block, a run folder listens to the progress bars of whatever runs there
(`workbench.progress`) and keeps progress.json up to date (`workbench.progress_file`); the file stays
with the final state when the run ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import weakref
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError
from workbench.progress import listening
from workbench.progress_file import PROGRESS, ProgressFile
from workbench.results import Result, result_from_dict

FORMAT = "workbench-run/1"
MANIFEST = "manifest.json"
HEARTBEAT = "heartbeat.json"
HEARTBEAT_S = 5.0  # seconds between heartbeats; $WORKBENCH_HEARTBEAT_S overrides it (tests use 0.2)
STALE_BEATS = 12  # a heartbeat older than this many intervals means the run's process is gone


def runs_root() -> Path:
    """Where fresh run folders go: $WORKBENCH_RUNS, else ./runs."""
    return Path(os.environ.get("WORKBENCH_RUNS", "runs")).expanduser()


def heartbeat_interval() -> float:
    """Seconds between heartbeats: $WORKBENCH_HEARTBEAT_S when it is a positive number, else 5."""
    try:
        value = float(os.environ.get("WORKBENCH_HEARTBEAT_S", HEARTBEAT_S))
    except ValueError:
        return HEARTBEAT_S
    return value if 0 < value < float("inf") else HEARTBEAT_S


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    tmp.replace(path)


class _Heartbeat:
    """Rewrites heartbeat.json (pid, host, time) every `interval` seconds from a daemon thread."""

    def __init__(self, folder: Path, interval: float) -> None:
        self.path, self.interval = folder / HEARTBEAT, interval
        self._stop = threading.Event()
        self.beat()  # the first beat lands before the manifest says "running"
        self._thread = threading.Thread(target=self._run, name="run-heartbeat", daemon=True)
        self._thread.start()

    def beat(self) -> None:
        write_json(
            self.path,
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "time": time.time(),
                "at": _now(),
                "interval_s": self.interval,
            },
        )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(OSError):  # e.g. the folder was deleted under the run
                self.beat()

    def stop(self, wait: bool = True) -> None:
        self._stop.set()
        if wait and self._thread is not threading.current_thread():
            self._thread.join(timeout=10 * self.interval + 5)


def _lock_folder(path: Path) -> int | None:
    """An exclusive OS lock on the folder itself (nothing is written; dropped when the process dies).

    Returns the descriptor to keep open, None where folders cannot be locked (Windows, a file system
    without flock: the pid and heartbeat checks remain), and raises BlockingIOError when another
    process (or another RunFolder in this one) holds the folder.
    """
    try:
        import fcntl
    except ImportError:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise
    except OSError:
        os.close(fd)
        return None
    return fd


_OPEN: weakref.WeakValueDictionary[str, RunFolder] = weakref.WeakValueDictionary()  # by resolved path


@dataclass
class RunFolder:
    path: Path
    command: str
    created: str
    _begun: bool = field(default=False, init=False, repr=False)
    _saved: bool = field(default=False, init=False, repr=False)
    _heartbeat: _Heartbeat | None = field(default=None, init=False, repr=False)
    _lock: Any = field(default=None, init=False, repr=False)  # closes the folder lock when called
    _progress: ProgressFile | None = field(default=None, init=False, repr=False)  # inside `with` only
    _listening: contextlib.ExitStack | None = field(default=None, init=False, repr=False)

    @classmethod
    def create(cls, out: str | Path | None, label: str, command: str) -> RunFolder:
        """Make `out` (or a fresh folder under runs_root()) a run folder; refuse a foreign non-empty one.

        Refusals (a file, a foreign folder, a run folder another command is using) write nothing. A new
        or empty folder gets its "running" manifest now; an existing run folder keeps its manifest until
        the command calls `begin()` or saves, so a command refused later leaves it as it was.
        """
        if out is None:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            path = runs_root() / f"{stamp}-{label}"
            path = path.with_name(path.name + f"-{os.getpid()}") if path.exists() else path
        else:
            path = Path(out).expanduser()
        if path.is_file():
            raise WorkbenchError(f"--out {path} is a file; give a folder for the run.")
        existing = (path / MANIFEST).is_file()
        if path.is_dir() and any(path.iterdir()) and not existing:
            raise WorkbenchError(
                f"--out {path} is a non-empty folder that is not a run folder; choose another."
            )
        if existing:
            _refuse_if_in_use(path)
        path.mkdir(parents=True, exist_ok=True)
        previous = _OPEN.get(str(path.resolve()))
        if previous is not None:  # this process left it unfinished (e.g. a notebook cell that raised)
            previous._abandon()
        run = cls(path, command, _now())
        try:
            fd = _lock_folder(path)
        except BlockingIOError:
            raise WorkbenchError(_in_use(path, None)) from None
        if fd is not None:
            run._lock = weakref.finalize(run, os.close, fd)
        _OPEN[str(path.resolve())] = run
        if not existing:
            run.begin()
        return run

    def begin(self) -> None:
        """Mark the run "running" (pid, host, heartbeat) once the command's own checks have passed."""
        if self._begun:
            return
        self._begun = True
        with contextlib.suppress(FileNotFoundError):  # a previous run's progress is not this one's
            (self.path / PROGRESS).unlink()
        if self._progress is not None:
            self._progress.begin()
        self._heartbeat = _Heartbeat(self.path, heartbeat_interval())
        weakref.finalize(self, self._heartbeat.stop, False)  # a forgotten RunFolder stops beating
        write_json(self.path / MANIFEST, self._manifest("running", []))

    def _manifest(
        self, status: str, results: list[Result], files: list[str] | None = None, main: Result | None = None
    ) -> dict:
        # The main result (by default the last) is the run's analysis; its provenance is the run's.
        main_result = main or (results[-1] if results else None)
        main = asdict(main_result.provenance) if main_result else {}  # type: ignore[attr-defined]
        return {
            "format": FORMAT,
            "command": self.command,
            "status": status,
            "created": self.created,
            "finished": _now() if status == "complete" else None,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "heartbeat_s": self._heartbeat.interval if self._heartbeat else heartbeat_interval(),
            "model": main.get("model"),
            "data": main.get("data"),
            "seed": main.get("seed"),
            "packages": main.get("packages"),
            "results": [
                {"kind": r.kind, "title": r.title, "definition": r.provenance.definition}  # type: ignore[attr-defined]
                for r in results
            ],
            "files": sorted(
                [MANIFEST, "results.json", *(files or [])]
                + ([PROGRESS] if (self.path / PROGRESS).is_file() else [])
            ),
        }

    def _finish(self, manifest: dict) -> None:
        """Stop the heartbeat, write the final manifest, then drop heartbeat.json and the folder lock."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
        write_json(self.path / MANIFEST, manifest)
        with contextlib.suppress(FileNotFoundError):
            (self.path / HEARTBEAT).unlink()
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock()  # a finalizer runs once; later calls do nothing

    def _abandon(self) -> None:
        """Let go of the folder without writing: stop the heartbeat (the run then reads interrupted)."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
        self._release()

    def _end_progress(self, complete: bool) -> None:
        """Write progress.json's final state (done == total for a complete run); later bars are not heard."""
        if self._progress is not None:
            self._progress.finish(complete)

    def __enter__(self) -> RunFolder:
        """Listen to the progress bars of the block (progress.json, once the run has begun)."""
        if self._listening is None:
            self._progress = ProgressFile(self.path / PROGRESS, write_json, writing=self._begun)
            self._listening = contextlib.ExitStack()
            self._listening.enter_context(listening(self._progress))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """On an exception the manifest says "failed" (or "interrupted") and why, if the run had begun.

        A command refused before it began leaves an existing folder exactly as it was.
        """
        try:
            if not self._begun or (exc is None and self._saved):
                self._release()
                return
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            self._end_progress(complete=False)  # progress.json keeps where the run stopped
            manifest = self._manifest(status, [])
            manifest["error"] = (
                f"{type(exc).__name__}: {exc}"
                if exc is not None
                else "the command ended without saving results"
            )
            self._finish(manifest)
        finally:
            if self._listening is not None:
                self._listening.close()
                self._listening = None

    def save(self, results: list[Result], files: list[str] | None = None, main: Result | None = None) -> None:
        """Write results.json, then mark the manifest complete; `main` (default: the last) is the run's."""
        self.begin()
        write_json(self.path / "results.json", {"format": FORMAT, "results": [r.to_dict() for r in results]})
        self._end_progress(complete=True)
        self._finish(self._manifest("complete", results, files, main))
        self._saved = True


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise WorkbenchError(f"{path} is unreadable ({e}); the run folder cannot be used.") from e
    if not isinstance(data, dict):
        raise WorkbenchError(f"{path} is not a run manifest; the run folder cannot be used.")
    return data


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (a zombie counts as gone)."""
    if os.name == "nt":  # os.kill(pid, 0) would signal the process there: rely on the heartbeat
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, under another user
        return True
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _live_status(path: Path, manifest: dict, again: bool = True) -> str:
    status = manifest.get("status")
    if status != "running":
        return str(status)
    pid, host = manifest.get("pid"), manifest.get("host")
    if not isinstance(pid, int):  # written before runs recorded their process: cannot tell
        return "running"
    try:
        beat = json.loads((path / HEARTBEAT).read_text())
    except (OSError, ValueError):
        beat = None
    if not isinstance(beat, dict):  # the run may have finished between the two reads: look again
        if again:
            return _live_status(path, _read_json(path / MANIFEST), again=False)
        return "interrupted"
    if host == socket.gethostname() and not _pid_alive(pid):
        return "interrupted"
    try:
        interval = float(beat.get("interval_s") or manifest.get("heartbeat_s") or HEARTBEAT_S)
        age = time.time() - float(beat["time"])
    except (KeyError, TypeError, ValueError):
        return "interrupted"
    return "interrupted" if age > STALE_BEATS * interval else "running"


def run_status(path: str | Path) -> str:
    """A run folder's status: complete, failed, running, or interrupted (a "running" run whose process
    is gone on this host, or whose heartbeat is older than STALE_BEATS intervals)."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise WorkbenchError(f"{path} is not a run folder: {manifest_path} is missing.")
    return _live_status(path, _read_json(manifest_path))


def _in_use(path: Path, manifest: dict | None) -> str:
    who = ""
    if manifest and manifest.get("status") == "running":
        who = f" (pid {manifest.get('pid')} on {manifest.get('host')}: {manifest.get('command')})"
    return (
        f"--out {path} is in use by another running workbench command{who}. Wait for it to finish or "
        "stop it, or choose another --out."
    )


def _refuse_if_in_use(path: Path) -> None:
    try:
        manifest = _read_json(path / MANIFEST)
    except WorkbenchError:  # an unreadable manifest is no run's: the new run may replace it
        return
    ours = manifest.get("pid") == os.getpid() and manifest.get("host") == socket.gethostname()
    if not ours and manifest.get("pid") is not None and _live_status(path, manifest) == "running":
        raise WorkbenchError(_in_use(path, manifest))


@dataclass
class Run:
    """A run folder read back: its manifest and its result objects."""

    path: Path
    manifest: dict
    results: list[Result]

    def find(self, kind: str) -> Result | None:
        return next((r for r in self.results if r.kind == kind), None)


_STATUS_HINTS = {
    "running": "it is still running; wait for it to finish",
    "interrupted": "its process stopped before it finished (killed, out of memory, ...); run it again "
    "(capture and transcoder train continue with --resume)",
    "failed": "it failed; run it again",
}


def read_run(path: str | Path) -> Run:
    path = Path(path)
    status = run_status(path)
    manifest, results_path = _read_json(path / MANIFEST), path / "results.json"
    if status != "complete" or not results_path.is_file():
        hint = _STATUS_HINTS.get(status, "run it again")
        error = f" ({manifest['error']})" if manifest.get("error") else ""
        raise WorkbenchError(f"Run folder {path} is incomplete (status {status!r}){error}: {hint}.")
    results = [result_from_dict(r) for r in _read_json(results_path)["results"]]
    return Run(path, manifest, results)


def list_runs(root: str | Path | None = None) -> list[dict]:
    """The run folders directly under `root` (default: runs_root()), oldest name first, each with its
    path, command, status (as `run_status` reads it), created and finished."""
    root = runs_root() if root is None else Path(root)
    folders = sorted(p for p in root.iterdir() if (p / MANIFEST).is_file()) if root.is_dir() else []
    rows = []
    for path in folders:
        try:
            manifest = _read_json(path / MANIFEST)
            status = _live_status(path, manifest)
        except WorkbenchError:
            manifest, status = {}, "unreadable"
        keep = {k: manifest.get(k) for k in ("command", "created", "finished")}
        rows.append({"path": str(path), "status": status, **keep})
    return rows
