"""Run folders: every analysis writes manifest.json (provenance) and results.json into one folder.

Reports and the Lab panel read run folders and never recompute what one holds. Files are written
atomically, and the manifest's status stays "running" until the results are complete, so an
interrupted run is never mistaken for a finished one.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError
from workbench.results import Result, result_from_dict

FORMAT = "workbench-run/1"


def runs_root() -> Path:
    """Where fresh run folders go: $WORKBENCH_RUNS, else ./runs."""
    return Path(os.environ.get("WORKBENCH_RUNS", "runs")).expanduser()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    tmp.replace(path)


@dataclass
class RunFolder:
    path: Path
    command: str
    created: str

    @classmethod
    def create(cls, out: str | Path | None, label: str, command: str) -> RunFolder:
        """Make `out` (or a fresh folder under runs_root()) a run folder; refuse a foreign non-empty one."""
        if out is None:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            path = runs_root() / f"{stamp}-{label}"
            path = path.with_name(path.name + f"-{os.getpid()}") if path.exists() else path
        else:
            path = Path(out).expanduser()
        if path.is_file():
            raise WorkbenchError(f"--out {path} is a file; give a folder for the run.")
        if path.is_dir() and any(path.iterdir()) and not (path / "manifest.json").is_file():
            raise WorkbenchError(
                f"--out {path} is a non-empty folder that is not a run folder; choose another."
            )
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path, command, _now())
        write_json(path / "manifest.json", run._manifest("running", []))
        return run

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
            "model": main.get("model"),
            "data": main.get("data"),
            "seed": main.get("seed"),
            "packages": main.get("packages"),
            "results": [
                {"kind": r.kind, "title": r.title, "definition": r.provenance.definition}  # type: ignore[attr-defined]
                for r in results
            ],
            "files": sorted(["manifest.json", "results.json", *(files or [])]),
        }

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """On an exception the manifest says "failed" and why: the folder is never taken for a result."""
        if exc is not None:
            manifest = self._manifest("failed", [])
            manifest["error"] = f"{type(exc).__name__}: {exc}"
            write_json(self.path / "manifest.json", manifest)

    def save(self, results: list[Result], files: list[str] | None = None, main: Result | None = None) -> None:
        """Write results.json, then mark the manifest complete; `main` (default: the last) is the run's."""
        write_json(self.path / "results.json", {"format": FORMAT, "results": [r.to_dict() for r in results]})
        write_json(self.path / "manifest.json", self._manifest("complete", results, files, main))


@dataclass
class Run:
    """A run folder read back: its manifest and its result objects."""

    path: Path
    manifest: dict
    results: list[Result]

    def find(self, kind: str) -> Result | None:
        return next((r for r in self.results if r.kind == kind), None)


def read_run(path: str | Path) -> Run:
    path = Path(path)
    manifest_path, results_path = path / "manifest.json", path / "results.json"
    if not manifest_path.is_file():
        raise WorkbenchError(f"{path} is not a run folder: {manifest_path} is missing.")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("status") != "complete" or not results_path.is_file():
        raise WorkbenchError(
            f"Run folder {path} is incomplete (status {manifest.get('status')!r}); run it again."
        )
    results = [result_from_dict(r) for r in json.loads(results_path.read_text())["results"]]
    return Run(path, manifest, results)
