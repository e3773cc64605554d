"""A lock beside a file that several processes, perhaps on several hosts, open at once.

Opening a new SQLite file creates its tables; two processes doing that at once leave it
half-made (MLflow's ``mlflow.db``, Optuna's ``optuna.db``). :func:`beside` serialises them
with a lock file next to the file it guards, ``<file>.lock``: where the file is, so every
process that reaches the file (a second terminal, a Slurm job on another node of a shared
filesystem) reaches the same lock, and one lock file per guarded file, never one per path
in a temporary directory.

The lock is the one the run journals use (``record.journal``): ``flock``, exclusive, on the
lock file opened for writing. Local filesystems give ``flock`` its own semantics; Linux's
NFS client takes it as a byte-range lock on the whole file, which the server shares between
hosts. The lock file is never removed (removing a lock file another process has opened and
is about to lock is how two processes end up holding "the" lock at once). Where the
filesystem has no locks, or the directory cannot hold the lock file (a store on a read-only
share, which nothing can create tables in either), the block runs without one.

This module imports nothing of the project: every part may use it.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

SUFFIX = ".lock"
POLL_S = 0.05
# Errors of a filesystem without working locks (NFS without a lock manager, some FUSE).
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class LockTimeout(TimeoutError):
    """Another process held the lock for longer than the caller waits."""


def lock_path(path: str | os.PathLike[str], suffix: str = SUFFIX) -> Path:
    """The lock file of ``path``: beside it, its name plus ``suffix``."""
    guarded = Path(path)
    return guarded.with_name(guarded.name + suffix)


@contextmanager
def beside(
    path: str | os.PathLike[str], timeout_s: float = 60.0, suffix: str = SUFFIX
) -> Iterator[Path]:
    """Hold the lock of ``path`` (``<path>.lock``, see the module) while the block runs.

    Args:
        path: the file the lock guards; its directory must exist.
        timeout_s: how long to wait for another process to let it go.
        suffix: the lock file's name after ``path``'s (where ``.lock`` is taken already).

    Yields:
        The lock file's path.

    Raises:
        LockTimeout: another process held it for ``timeout_s``; the message names the file.
    """
    lock = lock_path(path, suffix)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as error:  # a read-only directory: nothing can be created there anyway
        log.debug("no lock beside %s (%s): opened without one", path, error)
        yield lock
        return
    try:
        locked = _acquire(fd, lock, timeout_s)
        try:
            yield lock
        finally:
            if locked:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _acquire(fd: int, lock: Path, timeout_s: float) -> bool:
    """Lock ``fd``, waiting up to ``timeout_s``; False where the filesystem has no locks."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise LockTimeout(
                    f"{lock} is held by another process for more than {timeout_s:.0f} s"
                ) from None
            time.sleep(POLL_S)
        except OSError as error:
            if error.errno in _NO_LOCKS:
                log.debug("%s: this filesystem has no locks (%s)", lock, error)
                return False
            raise
