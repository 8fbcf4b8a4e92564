"""The job store on its own (D31): ids, FIFO, limits, atomic files, recovery, expiry, locking.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pytest

from gigastt.jobs.store import (
    AUDIO_DIR,
    RESULT_DIR,
    TMP_DIR,
    AudioDamaged,
    JobStore,
    QueueFull,
    StorageFull,
    StoreError,
    StoreThread,
    audio_file,
    is_job_id,
    new_job_id,
    stage_file,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _add(store: JobStore, data: bytes = b"RIFF-audio", *, jobs_max: int = 10,
         max_bytes: int = 0, fmt: str = "json") -> str:
    staged = stage_file(store.root / TMP_DIR, data)
    return store.add(staged, fmt, len(data), hashlib.sha256(data).hexdigest(),
                     jobs_max=jobs_max, max_bytes=max_bytes).id


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for sub in (AUDIO_DIR, RESULT_DIR, TMP_DIR)
                  for p in (root / sub).iterdir())


def test_ids_are_uuid7_plus_128_random_bits_and_validated() -> None:
    ids = {new_job_id() for _ in range(1000)}
    assert len(ids) == 1000
    for job_id in list(ids)[:50]:
        assert is_job_id(job_id) and len(job_id) == 64
        assert job_id[12] == "7" and job_id[16] in "89ab"  # UUID version and variant
    for bad in ("", "x" * 64, "A" * 64, "0" * 63, "0" * 65, "../" + "0" * 61, "0" * 64 + "\n"):
        assert not is_job_id(bad)


def test_fifo_and_the_state_machine(tmp_path: Path) -> None:
    clock = Clock()
    store = JobStore(tmp_path, clock=clock)
    first, second = _add(store, b"one"), _add(store, b"two")
    job = store.next_queued()
    assert job is not None and job.id == first and job.status == "queued"
    assert store.start(first) and not store.start(first)  # only a queued job starts
    nxt = store.next_queued()
    assert nxt is not None and nxt.id == second
    store.set_progress(first, 0.5)
    running = store.get(first)
    assert running is not None and running.progress == 0.5 and running.started == clock.now
    assert store.finish(first, b'{"text":""}', 1.5)
    done = store.get(first)
    assert done is not None and (done.status, done.progress, done.duration) == ("done", 1.0, 1.5)
    assert store.read_result(first) == b'{"text":""}'
    assert not (tmp_path / AUDIO_DIR / first).exists()  # audio is dropped once done
    assert store.fail(second, "invalid_audio", "bad")
    failed = store.get(second)
    assert failed is not None and (failed.status, failed.error_code) == ("failed", "invalid_audio")
    assert store.next_queued() is None
    assert _files(tmp_path) == [f"{RESULT_DIR}/{first}.json"]


def test_cancel_then_delete_then_unknown(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    job_id = _add(store)
    assert not store.delete(job_id)  # an unfinished job is cancelled first, not deleted
    assert store.cancel(job_id) and not store.cancel(job_id)
    cancelled = store.get(job_id)
    assert cancelled is not None and cancelled.status == "cancelled"
    assert not store.start(job_id)
    assert store.delete(job_id) and not store.delete(job_id)
    assert store.get(job_id) is None and _files(tmp_path) == []


def test_a_job_cancelled_while_running_keeps_no_result(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    job_id = _add(store)
    store.start(job_id)
    store.cancel(job_id)
    assert not store.finish(job_id, b"{}", 1.0)
    job = store.get(job_id)
    assert job is not None and job.status == "cancelled" and _files(tmp_path) == []


def test_queue_and_byte_limits_leave_nothing_behind(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    _add(store, b"a" * 10, jobs_max=2)
    _add(store, b"b" * 10, jobs_max=2)
    with pytest.raises(QueueFull):
        _add(store, b"c" * 10, jobs_max=2)
    with pytest.raises(StorageFull):
        _add(store, b"d" * 10, jobs_max=9, max_bytes=25)
    assert store.active_count() == 2 and store.used_bytes() == 20
    assert len(_files(tmp_path)) == 2  # the refused stages are gone


def test_a_full_disk_while_staging_leaves_nothing(tmp_path: Path) -> None:
    import resource

    JobStore(tmp_path)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        with pytest.raises(StorageFull, match="full"):
            stage_file(tmp_path / TMP_DIR, b"x" * 100_000)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert _files(tmp_path) == []


def test_recover_requeues_running_jobs_and_removes_strays(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    running, queued, done = _add(store, b"r"), _add(store, b"q"), _add(store, b"d")
    store.start(done)
    store.finish(done, b"{}", 1.0)
    store.start(running)
    store.set_progress(running, 0.7)
    store.close()  # as after kill -9: the row still says running
    (tmp_path / TMP_DIR / "stage.half").write_bytes(b"half")
    (tmp_path / AUDIO_DIR / new_job_id()).write_bytes(b"orphan")
    (tmp_path / RESULT_DIR / f"{new_job_id()}.json").write_bytes(b"{}")
    store = JobStore(tmp_path)
    assert store.recover() == 1
    job = store.get(running)
    assert job is not None and (job.status, job.progress, job.started) == ("queued", 0.0, None)
    first = store.next_queued()
    assert first is not None and first.id == running  # still ahead of the later job
    assert _files(tmp_path) == sorted([f"{AUDIO_DIR}/{running}", f"{AUDIO_DIR}/{queued}",
                                       f"{RESULT_DIR}/{done}.json"])


def test_damaged_or_missing_audio_is_detected(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    job_id = _add(store, b"RIFF" + bytes(100))
    job = store.get(job_id)
    assert job is not None and audio_file(tmp_path, job).read_bytes() == b"RIFF" + bytes(100)
    (tmp_path / AUDIO_DIR / job_id).write_bytes(b"RIFF" + bytes(99) + b"\x01")
    with pytest.raises(AudioDamaged, match="damaged"):
        audio_file(tmp_path, job)
    (tmp_path / AUDIO_DIR / job_id).unlink()
    with pytest.raises(AudioDamaged, match="missing"):
        audio_file(tmp_path, job)


def test_expiry_removes_finished_jobs_with_their_files(tmp_path: Path) -> None:
    clock = Clock()
    store = JobStore(tmp_path, clock=clock)
    old, fresh, active = _add(store), _add(store), _add(store)
    for job_id in (old, fresh):
        store.start(job_id)
        store.finish(job_id, b"{}", 1.0)
        clock.now += 50
    assert store.expire(0) == 0  # 0 = kept until DELETE
    assert store.expire(60) == 1
    assert store.get(old) is None and store.get(fresh) is not None
    assert store.get(active) is not None  # unfinished jobs never expire
    assert f"{RESULT_DIR}/{old}.json" not in _files(tmp_path)


def test_one_process_per_directory_and_wal_mode(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    with pytest.raises(StoreError, match="in use by another gigastt process"):
        JobStore(tmp_path)
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()
    JobStore(tmp_path).close()  # the lock goes with the process or close()


def test_an_unusable_directory_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(StoreError, match="cannot use jobs directory"):
        JobStore(blocker / "jobs")


def test_store_thread_runs_every_call_on_one_thread(tmp_path: Path) -> None:
    import asyncio
    import threading

    db = StoreThread(tmp_path)
    try:
        names = {db.run(lambda: threading.current_thread().name) for _ in range(3)}
        assert len(names) == 1 and names != {threading.current_thread().name}

        async def main() -> str:
            return await db.call(lambda: threading.current_thread().name)

        assert asyncio.run(main()) in names
    finally:
        db.close()
    assert os.listdir(tmp_path / TMP_DIR) == []


def test_a_database_that_cannot_grow_is_storage_full_and_the_store_goes_on(
        tmp_path: Path) -> None:
    # SQLite rolls back by itself on SQLITE_FULL: the store must report StorageFull (507), not
    # the error of a second ROLLBACK, and stay usable.
    store = JobStore(tmp_path)
    kept = _add(store, b"kept")
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(StorageFull, match="cannot grow"):
        for n in range(100):
            data = b"x%d" % n
            store.add(stage_file(tmp_path / TMP_DIR, data), "json", len(data),
                      hashlib.sha256(data).hexdigest(), jobs_max=1000, max_bytes=0,
                      options="{" + " " * 4000 + "}")
    assert not store.db.in_transaction
    assert store.cancel(kept) and store.delete(kept)  # later transactions still work
    assert _files(tmp_path) == [f"{AUDIO_DIR}/{i}" for i in sorted(
        r[0] for r in store.db.execute("SELECT id FROM jobs"))]
