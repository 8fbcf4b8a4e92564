"""The jobs directory: a SQLite database (WAL) of job states, audio and results as files beside it.

``JobStore`` is synchronous and used from one thread; ``StoreThread`` gives it a thread of its own
so that the event loop never waits for the disk (docs/architecture.md §17, D31).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import fcntl
import hashlib
import os
import re
import secrets
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, ParamSpec, TypeVar

__all__ = ["ACTIVE", "FINISHED", "AudioDamaged", "Job", "JobStore", "QueueFull", "StorageFull",
           "StoreError", "StoreThread", "audio_file", "is_job_id", "new_job_id"]

P = ParamSpec("P")
T = TypeVar("T")

DB_NAME = "jobs.sqlite3"
LOCK_NAME = "jobs.lock"
AUDIO_DIR, RESULT_DIR, TMP_DIR = "audio", "results", "tmp"
ACTIVE = ("queued", "running")
FINISHED = ("done", "failed", "cancelled")
SCHEMA_VERSION = 1
_ID = re.compile(r"[0-9a-f]{64}\Z")
# What a full disk, a quota or a file-size limit look like to write(2).
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    format TEXT NOT NULL,
    options TEXT NOT NULL DEFAULT '{}',
    audio_bytes INTEGER NOT NULL,
    audio_sha256 TEXT NOT NULL,
    result_bytes INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    progress REAL NOT NULL DEFAULT 0,
    duration REAL,
    error_code TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
"""


class StoreError(Exception):
    """The jobs directory cannot be used; the message says why (never holds audio or text)."""


class StorageFull(StoreError):
    """No room: the disk, a quota or a file-size limit refused a write, or ``--jobs-max-bytes``
    would be exceeded. Nothing of the refused write is left behind."""


class QueueFull(StoreError):
    """``--jobs-max`` jobs are queued or running already."""


class AudioDamaged(StoreError):
    """A job's stored audio is missing, has another size, or fails its SHA-256."""


@dataclass(frozen=True, slots=True)
class Job:
    """One row of the ``jobs`` table; times are Unix seconds."""

    id: str
    status: str
    format: str
    options: str  # JSON: the /v1/transcribe query options the job was accepted with
    audio_bytes: int
    audio_sha256: str
    result_bytes: int
    created: float
    started: float | None
    finished: float | None
    progress: float
    duration: float | None
    error_code: str | None
    error: str | None


_COLUMNS = ("id, status, format, options, audio_bytes, audio_sha256, result_bytes, created,"
            " started, finished, progress, duration, error_code, error")


def new_job_id() -> str:
    """A UUIDv7 (time-ordered, 74 random bits) followed by 128 more random bits, as 64 lowercase
    hex digits: unguessable, since a result holds private speech (D31)."""
    millis = time.time_ns() // 1_000_000 & ((1 << 48) - 1)
    rand = int.from_bytes(secrets.token_bytes(10), "big")
    uuid7 = ((millis << 80) | (0x7 << 76) | ((rand >> 62) & 0xFFF) << 64 | (0b10 << 62)
             | (rand & ((1 << 62) - 1)))
    return f"{uuid7:032x}{secrets.token_hex(16)}"


def is_job_id(text: str) -> bool:
    return _ID.match(text) is not None


def log_id(job_id: str) -> str:
    """What logs show of a job id: its UUIDv7 half, enough to follow a job through the log but
    not to fetch its result (that takes the random half too)."""
    return job_id[:32]


def _full(exc: OSError) -> bool:
    return exc.errno in _FULL_ERRNOS


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def stage_file(tmp_dir: Path, data: bytes | bytearray | memoryview) -> Path:
    """``data`` written and fsynced under ``tmp_dir`` (to be renamed into place); StorageFull on
    a full disk, with the partial file removed."""
    try:
        fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="stage.")  # mode 0600: private speech
    except OSError as exc:  # no inode left, or a quota
        if _full(exc):
            raise StorageFull(f"the jobs directory is full ({exc.strerror})") from exc
        raise
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            _write_all(handle, data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        _unlink(path)
        if _full(exc):
            raise StorageFull(f"the jobs directory is full ({exc.strerror})") from exc
        raise
    return path


def _write_all(handle: IO[bytes], data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[handle.write(view[: 1 << 24]) or 0 :]


def audio_file(root: Path, job: Job) -> Path:
    """A job's stored audio file, checked against the size and SHA-256 taken when it was
    accepted (read block by block: the file may hold hours)."""
    path = root / AUDIO_DIR / job.id
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            digest = hashlib.file_digest(handle, "sha256")
    except FileNotFoundError as exc:
        raise AudioDamaged("the stored audio file is missing") from exc
    if size != job.audio_bytes or digest.hexdigest() != job.audio_sha256:
        raise AudioDamaged("the stored audio file is damaged (size or SHA-256 differs)")
    return path


class JobStore:
    """The database and the files of one jobs directory, for one thread and one process.

    Every state change is one transaction; a file is complete under its final name before the
    row that names it is committed (tmp + fsync + rename + directory fsync), so a crash at any
    point leaves either the old state or the new one, and ``recover`` removes strays.
    """

    def __init__(self, root: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self.clock = clock
        try:
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
            for sub in (AUDIO_DIR, RESULT_DIR, TMP_DIR):
                (root / sub).mkdir(exist_ok=True, mode=0o700)
            # One server per directory: two runners would run every job twice.
            self._lock = open(root / LOCK_NAME, "a+b")  # noqa: SIM115 - held until close()
        except OSError as exc:
            raise StoreError(f"cannot use jobs directory {root}: {exc.strerror}") from exc
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._lock.close()
            raise StoreError(f"jobs directory {root} is in use by another gigastt process") from exc
        try:
            self.db = sqlite3.connect(root / DB_NAME, isolation_level=None,
                                      check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            # FULL: a job acknowledged with 202 survives a power cut too, not only kill -9.
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(_SCHEMA)
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            self._lock.close()
            raise StoreError(f"cannot open the jobs database in {root}: {exc}") from exc

    def close(self) -> None:
        self.db.close()
        self._lock.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
            self.db.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (SQLITE_FULL, SQLITE_IOERR): a second
            # ROLLBACK would hide the real error, and a failed COMMIT must not leave the
            # connection inside a transaction that every later BEGIN would trip over.
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    def _job(self, row: tuple[object, ...] | None) -> Job | None:
        return None if row is None else Job(*row)  # type: ignore[arg-type]

    # --- start-up ---------------------------------------------------------------------------

    def recover(self) -> int:
        """After a crash or a stop: running jobs are queued again (their work is redone from the
        start), and files that no row needs (stages, audio of finished jobs, orphans) are
        removed. Returns how many jobs were requeued."""
        try:
            return self._recover()
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot recover the jobs directory {self.root}: {exc}") from exc

    def _recover(self) -> int:
        with self._transaction() as db:
            requeued = db.execute("UPDATE jobs SET status='queued', started=NULL, progress=0"
                                  " WHERE status='running'").rowcount
        active = {r[0] for r in self.db.execute(
            "SELECT id FROM jobs WHERE status IN ('queued','running')")}
        done = {r[0] for r in self.db.execute("SELECT id FROM jobs WHERE status='done'")}
        for path in (self.root / TMP_DIR).iterdir():
            _unlink(path)
        for path in (self.root / AUDIO_DIR).iterdir():
            if path.name not in active:
                _unlink(path)
        for path in (self.root / RESULT_DIR).iterdir():
            if path.name.removesuffix(".json") not in done:
                _unlink(path)
        return requeued

    # --- reading ----------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        return self._job(self.db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id=?",
                                         (job_id,)).fetchone())

    def next_queued(self) -> Job | None:
        """The oldest queued job (FIFO by acceptance)."""
        return self._job(self.db.execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE status='queued' ORDER BY seq LIMIT 1").fetchone())

    def active_count(self) -> int:
        row = self.db.execute(
            "SELECT COUNT(*) FROM jobs WHERE status IN ('queued','running')").fetchone()
        return int(row[0])

    def used_bytes(self) -> int:
        """Bytes the jobs hold on disk: audio of unfinished jobs and every result."""
        row = self.db.execute(
            "SELECT COALESCE(SUM(result_bytes + CASE WHEN status IN ('queued','running')"
            " THEN audio_bytes ELSE 0 END), 0) FROM jobs").fetchone()
        return int(row[0])

    def read_result(self, job_id: str) -> bytes:
        return (self.root / RESULT_DIR / f"{job_id}.json").read_bytes()

    # --- changes ----------------------------------------------------------------------------

    def add(self, staged: Path, fmt: str, size: int, sha256: str, *, jobs_max: int,
            max_bytes: int, options: str = "{}") -> Job:
        """Accept a job whose audio was staged (``stage_file``): QueueFull over ``jobs_max``,
        StorageFull over ``max_bytes`` (0 = no cap) or when the disk refuses; either way the
        staged file is removed and no row is left."""
        job_id = new_job_id()
        audio = self.root / AUDIO_DIR / job_id
        try:
            with self._transaction() as db:
                if self.active_count() >= jobs_max:
                    raise QueueFull(f"{jobs_max} jobs are queued or running")
                if max_bytes and self.used_bytes() + size > max_bytes:
                    raise StorageFull("the jobs directory holds --jobs-max-bytes already")
                os.replace(staged, audio)
                _fsync_dir(audio.parent)
                db.execute("INSERT INTO jobs (id, status, format, options, audio_bytes,"
                           " audio_sha256, created) VALUES (?, 'queued', ?, ?, ?, ?, ?)",
                           (job_id, fmt, options, size, sha256, self.clock()))
        except BaseException as exc:
            _unlink(staged)
            _unlink(audio)
            if isinstance(exc, sqlite3.OperationalError) and _sqlite_full(exc):
                raise StorageFull("the jobs database cannot grow (disk full)") from exc
            if isinstance(exc, OSError) and _full(exc):
                raise StorageFull(f"the jobs directory is full ({exc.strerror})") from exc
            raise
        job = self.get(job_id)
        assert job is not None
        return job

    def start(self, job_id: str) -> bool:
        with self._transaction() as db:
            return db.execute("UPDATE jobs SET status='running', started=?, progress=0"
                              " WHERE id=? AND status='queued'",
                              (self.clock(), job_id)).rowcount == 1

    def set_progress(self, job_id: str, progress: float) -> None:
        with self._transaction() as db:
            db.execute("UPDATE jobs SET progress=? WHERE id=? AND status='running'",
                       (progress, job_id))

    def finish(self, job_id: str, result: bytes, duration: float) -> bool:
        """Store the result (atomically) and mark the job done; False, with nothing kept, if it
        is no longer running (cancelled meanwhile). StorageFull if the result cannot be written."""
        final = self.root / RESULT_DIR / f"{job_id}.json"
        staged = stage_file(self.root / TMP_DIR, result)
        try:
            with self._transaction() as db:
                os.replace(staged, final)
                _fsync_dir(final.parent)
                changed = db.execute(
                    "UPDATE jobs SET status='done', finished=?, progress=1, duration=?,"
                    " result_bytes=? WHERE id=? AND status='running'",
                    (self.clock(), duration, len(result), job_id)).rowcount == 1
                if not changed:
                    raise _NotRunning
        except _NotRunning:
            _unlink(final)
            return False
        except BaseException:
            _unlink(staged)
            _unlink(final)
            raise
        _unlink(self.root / AUDIO_DIR / job_id)
        return True

    def fail(self, job_id: str, code: str, message: str) -> bool:
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE jobs SET status='failed', finished=?, error_code=?, error=?"
                " WHERE id=? AND status IN ('queued','running')",
                (self.clock(), code, message, job_id)).rowcount == 1
        _unlink(self.root / AUDIO_DIR / job_id)
        return changed

    def cancel(self, job_id: str) -> bool:
        """A queued or running job becomes ``cancelled`` and its audio is removed."""
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE jobs SET status='cancelled', finished=? WHERE id=?"
                " AND status IN ('queued','running')", (self.clock(), job_id)).rowcount == 1
        if changed:
            _unlink(self.root / AUDIO_DIR / job_id)
        return changed

    def delete(self, job_id: str) -> bool:
        """A finished job and its files are removed; False if unknown or not finished."""
        with self._transaction() as db:
            changed = db.execute("DELETE FROM jobs WHERE id=? AND status IN"
                                 " ('done','failed','cancelled')", (job_id,)).rowcount == 1
        if changed:
            self._remove_files(job_id)
        return changed

    def expire(self, ttl_secs: int) -> int:
        """Remove finished jobs older than ``ttl_secs`` (0 = keep), with their files."""
        if not ttl_secs:
            return 0
        cutoff = self.clock() - ttl_secs
        with self._transaction() as db:
            gone = [r[0] for r in db.execute(
                "SELECT id FROM jobs WHERE status IN ('done','failed','cancelled')"
                " AND finished <= ?", (cutoff,))]
            db.executemany("DELETE FROM jobs WHERE id=?", [(i,) for i in gone])
        for job_id in gone:
            self._remove_files(job_id)
        return len(gone)

    def _remove_files(self, job_id: str) -> None:
        _unlink(self.root / AUDIO_DIR / job_id)
        _unlink(self.root / RESULT_DIR / f"{job_id}.json")


class _NotRunning(Exception):
    pass


def _sqlite_full(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


class StoreThread:
    """The store on a thread of its own: the SQLite connection and every write stay on it, and
    callers on the event loop await them (``call``) without blocking it."""

    def __init__(self, root: Path, *, clock: Callable[[], float] = time.time) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="gigastt-jobs")
        self.root = root
        try:
            self.store: JobStore = self._pool.submit(JobStore, root, clock=clock).result()
        except BaseException:
            self._pool.shutdown()
            raise

    def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn`` on the store's thread, waited for (start-up and tests, not the event loop)."""
        return self._pool.submit(fn, *args, **kwargs).result()

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await asyncio.wrap_future(self._pool.submit(fn, *args, **kwargs))

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._pool.submit(self.store.close).result()
        self._pool.shutdown()
