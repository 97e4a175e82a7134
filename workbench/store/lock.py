"""One writer per store: an OS lock on `store.lock`, which the OS drops when the holder dies.

flock() locks belong to an open file description, so a second open in the same process is refused
just like another process, and a SIGKILLed writer never leaves a stale lock. The lock file itself is
never deleted (deleting a lock file lets two writers hold "the" lock on two different files).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import IO

from workbench.errors import WorkbenchError
from workbench.store.format import LOCK


def _try_lock(file: IO[str]) -> None:
    """Take an exclusive lock without waiting; OSError when someone else holds it."""
    try:
        import fcntl
    except ImportError:  # Windows: lock the first byte; released when the handle closes
        import msvcrt

        file.seek(0)
        msvcrt.locking(file.fileno(), msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


class StoreLock:
    """Held while a StoreWriter has the folder open; `release()` (or process death) frees it."""

    def __init__(self, file: IO[str], path: Path) -> None:
        self._file: IO[str] | None = file
        self.path = path

    @classmethod
    def acquire(cls, folder: Path) -> StoreLock:
        path = folder / LOCK
        file = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+")
        try:
            _try_lock(file)
        except OSError:
            try:
                holder = file.read().strip()
            except OSError:
                holder = ""
            file.close()
            raise WorkbenchError(
                f"The store {folder} is open in another writer ({holder or 'holder unknown'}). "
                "Two writers into one store would interleave their shards, so this one is refused: "
                "wait for that capture to finish or stop it (a killed writer frees the store at once), "
                "or write into another folder."
            ) from None
        file.seek(0)
        file.truncate()
        file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        file.flush()
        return cls(file, path)

    @property
    def held(self) -> bool:
        return self._file is not None

    def release(self) -> None:
        """Free the store; closing the file drops the OS lock. Safe to call twice."""
        if self._file is not None:
            self._file.close()
            self._file = None
