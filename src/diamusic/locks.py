"""One process per output directory: an OS lock held while a run, an ablation or a share of a
prepare job writes there.

The lock is `flock` on a file in the directory, so the kernel drops it when its process ends, however
it ends: a kill -9 never leaves a stale lock. The file holds the holder's PID for the message a
second process gets.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from diamusic.errors import DiamusicError


class DirectoryBusy(DiamusicError):
    """Another process holds the directory."""


class DirectoryLock:
    """An exclusive lock on ``directory`` (created if missing) under the file ``name``; `release` drops it."""

    def __init__(self, directory: str | Path, name: str = ".lock") -> None:
        self.directory = Path(directory)
        self.path = self.directory / name
        self.created = not self.directory.exists()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            self.fd = None
            raise DirectoryBusy(
                f"{self.directory} is in use by another diamusic process (PID {holder}): "
                "wait for it to finish or choose another directory"
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        """Drop the lock; a directory this lock created and nothing else wrote to goes too."""
        if self.fd is None:
            return
        if self.created and [p.name for p in self.directory.iterdir()] == [self.path.name]:
            self.path.unlink()
            self.directory.rmdir()
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> DirectoryLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
