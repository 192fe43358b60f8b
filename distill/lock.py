"""File locks: one distillation cycle per repository at a time, and short critical sections.

Both rest on `fcntl.flock`, so the kernel drops a lock when its holder dies, even by kill -9: a
stale lock file never blocks the next run. The lock file is never deleted, because unlinking a
locked file lets a second process lock a fresh inode under the same name while the first still
holds the old one.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.paths import strop_home
from core.errors import StropError


class LockHeld(StropError):
    """Another live process holds the cycle lock."""

    def __init__(self, path: Path, pid: int | None, started_at: str | None, argv: str | None):
        self.path = path
        self.pid = pid
        self.started_at = started_at
        who = f"pid {pid}" if pid is not None else "a process that has not yet written its pid"
        since = f", started {started_at}" if started_at else ""
        what = f" ({argv})" if argv else ""
        stop = f"stop it with `kill {pid}`" if pid is not None else "stop that process"
        super().__init__(
            f"another strop cycle is already running for this repository: {who}{since}{what}; "
            f"lock file {path}. Wait for it to finish, or {stop} (the lock is freed when it exits)."
        )


class CycleLock:
    """Non-blocking exclusive lock, held for the life of a `with` block.

    The lock file records the holder (pid, start time, command line) so that a refused process can
    say who is in the way.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._fd: int | None = None

    @classmethod
    def for_repo(cls, repo_key: str) -> "CycleLock":
        """The lock guarding the distillation cycle of one repository (`$STROP_HOME/locks/<key>.lock`)."""
        return cls(strop_home() / "locks" / f"{repo_key}.lock")

    def acquire(self) -> None:
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this CycleLock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise LockHeld(self.path, holder.get("pid"), holder.get("started_at"), holder.get("argv")) from None
        except BaseException:
            os.close(fd)
            raise
        holder = {
            "pid": os.getpid(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": socket.gethostname(),
            "argv": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # a reader between our release and the next holder sees "nobody"
        finally:
            os.close(fd)  # closing the last descriptor drops the flock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "CycleLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _read_holder(fd: int) -> dict:
    try:
        raw = os.pread(fd, 4096, 0)
        holder = json.loads(raw) if raw else {}
    except (OSError, ValueError):
        return {}  # the holder is between flock() and writing its record
    return holder if isinstance(holder, dict) else {}


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Blocking exclusive lock for a short read-modify-write (e.g. promoted.json)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
