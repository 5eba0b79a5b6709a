"""One writer per output folder: an exclusive ``fcntl.flock`` lock on ``<folder>/.lock``.

A command that writes results into a folder takes :class:`RunLock` before its first write and keeps it
until it exits; releasing removes the lock file. A second process on the same folder does not wait: it
gets :class:`LockedError` naming the pid of the holder (written into the lock file). The kernel drops the
lock when its process dies, even under ``kill -9``; the lock file then stays, naming the dead process, and
the next process takes the lock over and says so (:attr:`RunLock.taken_over`).

``flock``, not ``lockf``: a POSIX (``lockf``/``fcntl``) lock is dropped when the process closes *any*
descriptor of the file, e.g. by merely reading the holder's pid through the path; a ``flock`` lock belongs
to the one open descriptor and lasts until it is closed or the process ends.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Optional, Union

__all__ = ["LOCK_NAME", "LockedError", "RunLock", "read_holder"]

LOCK_NAME = ".lock"


class LockedError(ValueError):
    """The folder is held by another live process."""


def read_holder(lock_path: Union[str, Path]) -> Optional[int]:
    """The pid written in a lock file, or None (missing, empty or unreadable)."""
    try:
        text = Path(lock_path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class RunLock:
    """Exclusive lock of ``folder`` for this process (a context manager; :meth:`acquire` / :meth:`release`).

    ``taken_over``: after acquiring, the pid of a dead process whose lock file was left behind (else None).
    """

    def __init__(self, folder: Union[str, Path]):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.fd: Optional[int] = None
        self.taken_over: Optional[int] = None

    def acquire(self) -> "RunLock":
        """Take the lock at once or raise LockedError naming the holder's pid (OSError when the lock file
        cannot be created)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                holder = read_holder(self.path)
                raise LockedError(f"{self.folder} is being written by another process (pid "
                                  f"{holder if holder is not None else 'unknown'}; lock file {self.path}); wait for "
                                  f"it to finish or choose another --out") from None
            if _same_file(fd, self.path):
                break
            os.close(fd)        # the holder released and removed that file meanwhile: lock the new one
        else:
            raise LockedError(f"{self.folder}: could not take the lock file {self.path}")
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()   # not via the path: see the module doc
        previous = int(text) if text.isdigit() else None
        self.taken_over = previous if previous not in (None, os.getpid()) else None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file, then drop the lock (a no-op when not held). A process that opened the file
        just before sees, once it holds the lock, that the path no longer names it and starts again."""
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)
