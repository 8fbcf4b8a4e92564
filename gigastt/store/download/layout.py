"""The model directory on disk: creation, the download lock, ``<file>.partial`` names, checksums.
A verified partial is fsynced and renamed onto its final name, so no half file ever has it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from gigastt.store import NotWritableError, StoreError
from gigastt.store.download.progress import format_size

log = logging.getLogger("gigastt.store")

LOCK_FILE = ".download.lock"
PARTIAL_SUFFIX = ".partial"


def sha256_of(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def install(partial: Path, final: Path) -> None:
    """Durably move a verified partial onto its final name (atomic on one filesystem)."""
    try:
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, final)
        _fsync_dir(final.parent)
    except OSError as exc:
        raise disk_error(final, exc, 0) from exc


def disk_error(path: Path, exc: OSError, done: int) -> StoreError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreError(
            f"No space left on device writing {path} ({format_size(done)} written); free space"
            " and run again: the download resumes where it stopped"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return NotWritableError(f"Model directory {path.parent} is not writable: {exc.strerror}")
    return StoreError(f"cannot write {path}: {exc.strerror or exc}")


def _directory_error(directory: Path, exc: OSError) -> StoreError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreError(f"No space left on device creating {directory}")
    if directory.is_dir():
        return NotWritableError(f"Model directory {directory} is not writable: {exc.strerror}")
    return NotWritableError(f"Cannot create model directory {directory}: {exc.strerror}")


def make_model_dir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _directory_error(directory, exc) from exc


@contextlib.contextmanager
def model_lock(directory: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``<dir>/.download.lock``; waits for another holder."""
    try:
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise _directory_error(directory, exc) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("Waiting for another gigastt process working in %s", directory)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays, unlinking it would race a waiter
