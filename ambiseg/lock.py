"""Run-directory locks: one writer per run directory.

`run_lock(dir)` holds an exclusive `flock` on `dir/.ambiseg.lock`, which names the holder's pid.
A second writer (another process) is refused with one line naming that pid. The kernel drops
the lock when its holder dies, so the file a killed run leaves behind is stale and the next
writer takes it over. Where the file system has no `flock`, a lock naming a live pid is
respected and one naming a dead pid is taken over. Locks are re-entrant within a process, so
`ambiseg train` can hold the lock while its `Trainer` takes it again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import AmbisegError

__all__ = ["LOCK_NAME", "RunLockedError", "run_lock", "holder"]

LOCK_NAME = ".ambiseg.lock"
_HELD: dict[Path, int] = {}  # lock file -> nesting depth, in this process


class RunLockedError(AmbisegError):
    """Another live process writes to this run directory."""


def holder(directory: str | os.PathLike) -> int | None:
    """The pid written in `directory`'s lock file (None when there is none or it is unreadable)."""
    try:
        return int((Path(directory) / LOCK_NAME).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _refuse(directory: Path, pid: int | None) -> RunLockedError:
    who = f"process {pid}" if pid else "another process"
    return RunLockedError(
        f"{directory} is in use by {who} (lock file {directory / LOCK_NAME}); wait for it to "
        "finish or choose another --out"
    )


def _acquire(directory: Path, lock: Path) -> int:
    """Open and lock `lock`; returns its descriptor (the lock lives as long as it stays open)."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _refuse(directory, holder(directory)) from None
        except OSError as exc:  # no flock here (some network file systems): trust the pid
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
            pid = holder(directory)
            if pid is not None and pid != os.getpid() and _alive(pid):
                os.close(fd)
                raise _refuse(directory, pid) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file its previous holder unlinked while we waited
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


@contextlib.contextmanager
def run_lock(directory: str | os.PathLike) -> Iterator[Path]:
    """Hold `directory`'s lock for the block (the directory must exist); yields the lock file.

    Raises:
        RunLockedError: another live process holds it.
    """
    directory = Path(directory)
    lock = (directory / LOCK_NAME).resolve()
    if lock in _HELD:
        _HELD[lock] += 1
        try:
            yield lock
        finally:
            _HELD[lock] -= 1
        return
    fd = _acquire(directory, lock)
    _HELD[lock] = 1
    try:
        yield lock
    finally:
        del _HELD[lock]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)
