"""The job API end to end (D31): a real server, real signals, real files on disk.
"""

from __future__ import annotations

import json
import resource
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from gigastt.jobs.store import AUDIO_DIR, RESULT_DIR, TMP_DIR, is_job_id
from gigastt.testing import audio
from tests.conftest import long_speech
from tests.serverproc import ServerProcess, serving

# Two windows of /v1/transcribe (progress between them); SHORT where the length proves nothing.
SPEECH = audio.wav_bytes(audio.speech_like(30, seed=11))
SHORT = audio.wav_bytes(audio.speech_like(4, seed=12))


def post_job(server: ServerProcess, data: bytes, query: str = "") -> str:
    reply = server.request("POST", "/v1/jobs" + query, data)
    assert reply.status == 202, reply.body
    body = reply.json()
    assert isinstance(body, dict) and body["status"] == "queued" and is_job_id(body["id"])
    assert reply.headers["location"] == f"/v1/jobs/{body['id']}"
    return str(body["id"])


def status(server: ServerProcess, job_id: str) -> dict[str, object]:
    reply = server.request("GET", f"/v1/jobs/{job_id}")
    assert reply.status == 200, reply.body
    body = reply.json()
    assert isinstance(body, dict)
    return body


def wait_for(server: ServerProcess, job_id: str, statuses: tuple[str, ...] = ("done",),
             timeout: float = 120.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        body = status(server, job_id)
        if body["status"] in statuses:
            return body
        assert body["status"] in ("queued", "running"), body
        assert time.monotonic() < deadline, f"job stuck: {body}"
        time.sleep(0.02)


def error_code(reply: object) -> str:
    body = reply.json()  # type: ignore[attr-defined]
    assert isinstance(body, dict)
    return str(body["code"])


def leftovers(jobs_dir: Path) -> list[str]:
    return sorted(p.name for sub in (AUDIO_DIR, RESULT_DIR, TMP_DIR)
                  for p in (jobs_dir / sub).iterdir())


@pytest.fixture(scope="module")
def jobs_server(small_model: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[tuple[ServerProcess, Path]]:
    jobs_dir = tmp_path_factory.mktemp("jobs")
    for server in serving(small_model, "--jobs-dir", str(jobs_dir)):
        yield server, jobs_dir


def test_a_job_gives_the_same_bytes_as_transcribe_in_every_format(
        jobs_server: tuple[ServerProcess, Path]) -> None:
    server, _ = jobs_server
    job_id = post_job(server, SPEECH, "?format=srt")
    events = server.request("GET", f"/v1/jobs/{job_id}/events")
    assert events.status == 200 and events.headers["content-type"] == "text/event-stream"
    payloads = [json.loads(line[6:]) for line in events.body.decode().split("\n\n")
                if line.startswith("data: ")]
    kinds = [p["type"] for p in payloads]
    assert kinds[-1] == "done" and set(kinds[:-1]) <= {"progress"} and payloads[-1]["id"] == job_id
    progress = [p["progress"] for p in payloads if p["type"] == "progress"]
    assert progress == sorted(progress) and all(0.0 <= p <= 1.0 for p in progress)
    body = wait_for(server, job_id)
    assert list(body) == ["id", "status", "format", "progress", "created", "started", "finished",
                          "duration", "audio_bytes", "error"]
    assert (body["format"], body["progress"], body["audio_bytes"], body["error"]) == (
        "srt", 1.0, len(SPEECH), None)
    assert body["duration"] == 30.0
    default = server.request("GET", f"/v1/jobs/{job_id}/result")
    assert default.headers["content-type"] == "application/x-subrip; charset=utf-8"
    assert default.body == server.request("POST", "/v1/transcribe?format=srt", SPEECH).body
    for fmt in ("json", "text", "vtt"):
        reply = server.request("GET", f"/v1/jobs/{job_id}/result?format={fmt}")
        direct = server.request("POST", f"/v1/transcribe?format={fmt}", SPEECH)
        assert reply.status == 200 and reply.body == direct.body and reply.body
        assert reply.headers["content-type"] == direct.headers["content-type"]
    assert server.request("GET", f"/v1/jobs/{job_id}/result?format=xml").status == 400


@pytest.mark.parametrize("path", [
    "/v1/jobs/" + "0" * 64,  # well-formed, unknown
    "/v1/jobs/abc", "/v1/jobs/" + "A" * 64, "/v1/jobs/" + "0" * 65, "/v1/jobs/%2e%2e",
    "/v1/jobs/" + "0" * 63 + "%00", "/v1/jobs/" + "x" * 5000,
    "/v1/jobs/" + "0" * 64 + "/result", "/v1/jobs/" + "0" * 64 + "/events",
    "/v1/jobs/abc/result",
])
def test_unknown_and_malformed_ids_are_json_404s(jobs_server: tuple[ServerProcess, Path],
                                                 path: str) -> None:
    server, _ = jobs_server
    for method in ("GET", "DELETE") if not path.endswith(("result", "events")) else ("GET",):
        reply = server.request(method, path)
        assert reply.status == 404 and error_code(reply) == "job_not_found", (method, path)


def test_other_paths_methods_and_bodies(jobs_server: tuple[ServerProcess, Path]) -> None:
    server, _ = jobs_server
    assert server.request("GET", "/v1/jobs/" + "0" * 64 + "/nope").status == 404
    reply = server.request("PUT", "/v1/jobs/" + "0" * 64)
    assert reply.status == 405 and reply.headers["allow"] == "GET,HEAD,DELETE,OPTIONS"
    reply = server.request("DELETE", "/v1/jobs/" + "0" * 64 + "/result")
    assert reply.status == 405 and reply.headers["allow"] == "GET,HEAD,OPTIONS"
    assert server.request("GET", "/v1/jobs").status == 405
    reply = server.request("POST", "/v1/jobs?format=xml", SHORT)
    assert reply.status == 400 and error_code(reply) == "unsupported_format"
    reply = server.request("POST", "/v1/jobs", b"")
    assert reply.status == 400 and error_code(reply) == "empty_body"
    reply = server.request("POST", "/v1/jobs?vad=maybe", SHORT)
    assert reply.status == 400 and error_code(reply) == "invalid_vad"  # as /v1/transcribe
    job_id = post_job(server, SHORT, "?vad=false&format=text")
    wait_for(server, job_id)
    assert server.request("GET", f"/v1/jobs/{job_id}/result").body == server.request(
        "POST", "/v1/transcribe?vad=false&format=text", SHORT).body


def test_delete_cancels_then_removes_then_404(jobs_server: tuple[ServerProcess, Path]) -> None:
    server, jobs_dir = jobs_server
    done = post_job(server, SHORT)
    wait_for(server, done)
    assert (jobs_dir / RESULT_DIR / f"{done}.json").exists()
    assert server.request("DELETE", f"/v1/jobs/{done}").status == 204
    assert not (jobs_dir / RESULT_DIR / f"{done}.json").exists()
    for _ in range(2):
        reply = server.request("DELETE", f"/v1/jobs/{done}")
        assert reply.status == 404 and error_code(reply) == "job_not_found"
    assert server.request("GET", f"/v1/jobs/{done}/result").status == 404
    # An unfinished job: the first DELETE cancels it, the second removes it.
    blocker = post_job(server, audio.wav_bytes(long_speech(90, seed=3)))
    queued = post_job(server, SHORT)
    reply = server.request("DELETE", f"/v1/jobs/{queued}")
    assert reply.status == 200 and json.loads(reply.body)["status"] == "cancelled"
    assert not (jobs_dir / AUDIO_DIR / queued).exists()
    reply = server.request("GET", f"/v1/jobs/{queued}/result")
    assert reply.status == 409 and error_code(reply) == "job_failed"
    events = server.request("GET", f"/v1/jobs/{queued}/events").body
    assert events.startswith(b"data: ") and json.loads(events[6:])["type"] == "cancelled"
    assert server.request("DELETE", f"/v1/jobs/{queued}").status == 204
    assert server.request("DELETE", f"/v1/jobs/{queued}").status == 404
    # The running one too: its slot on the lane is given up and the next job runs.
    if wait_for(server, blocker, ("running", "done"))["status"] == "running":
        reply = server.request("DELETE", f"/v1/jobs/{blocker}")
        if reply.status == 200:  # else it had just finished: 204, removed
            assert json.loads(reply.body)["status"] == "cancelled"
            assert wait_for(server, blocker, ("cancelled",))["finished"] is not None
    after = post_job(server, SHORT)
    wait_for(server, after)


def test_result_before_done_is_409(jobs_server: tuple[ServerProcess, Path]) -> None:
    server, _ = jobs_server
    job_id = post_job(server, audio.wav_bytes(long_speech(60, seed=4)))
    reply = server.request("GET", f"/v1/jobs/{job_id}/result")
    assert reply.status == 409 and error_code(reply) == "job_not_done"
    wait_for(server, job_id)
    assert server.request("GET", f"/v1/jobs/{job_id}/result").status == 200


def test_undecodable_audio_fails_clearly_and_the_queue_moves_on(
        jobs_server: tuple[ServerProcess, Path]) -> None:
    server, _ = jobs_server
    bad = post_job(server, b"this is not audio at all")
    good = post_job(server, SHORT)
    failed = wait_for(server, bad, ("failed",))
    assert failed["error"] == {"code": "invalid_audio", "message": "Failed to decode audio file."
                               " Check format (WAV, MP3, M4A, OGG, FLAC supported)."}
    wait_for(server, good)
    events = server.request("GET", f"/v1/jobs/{bad}/events").body
    assert json.loads(events[6:])["error"]["code"] == "invalid_audio"


def test_jobs_are_off_without_jobs_dir(small_model: Path) -> None:
    server = ServerProcess(small_model)
    try:
        for method, path in (("POST", "/v1/jobs"), ("GET", "/v1/jobs/" + "0" * 64)):
            reply = server.request(method, path, SHORT if method == "POST" else None)
            assert reply.status == 404 and error_code(reply) == "jobs_disabled"
    finally:
        server.stop()


def test_job_routes_are_behind_origin_policy_and_api_key(small_model: Path,
                                                         tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("k" * 32 + "\n")
    server = ServerProcess(small_model, "--jobs-dir", str(tmp_path / "jobs"),
                           "--api-key-file", str(key))
    try:
        auth = {"Authorization": "Bearer " + "k" * 32}
        reply = server.request("POST", "/v1/jobs", SHORT, headers=auth)
        job_id = json.loads(reply.body)["id"]
        for method, path in (("POST", "/v1/jobs"), ("GET", f"/v1/jobs/{job_id}"),
                             ("GET", f"/v1/jobs/{job_id}/result"),
                             ("GET", f"/v1/jobs/{job_id}/events"),
                             ("DELETE", f"/v1/jobs/{job_id}")):
            reply = server.request(method, path, SHORT if method == "POST" else None)
            assert reply.status == 401 and error_code(reply) == "unauthorized", path
            reply = server.request(method, path, SHORT if method == "POST" else None,
                                   headers={**auth, "Origin": "https://evil.example"})
            assert reply.status == 403 and error_code(reply) == "origin_denied", path
        assert server.request("GET", f"/v1/jobs/{job_id}", headers=auth).status == 200
    finally:
        server.stop()
    # The log follows a job by the UUIDv7 half of its id only, refusals included: the whole id
    # fetches the result.
    assert job_id[:32] in server.log and job_id not in server.log


def test_queue_limit_and_byte_limit(small_model: Path, tmp_path: Path) -> None:
    long = audio.wav_bytes(long_speech(120, seed=5))
    server = ServerProcess(small_model, "--jobs-dir", str(tmp_path / "jobs"), "--jobs-max", "2",
                           "--jobs-max-bytes", str(3 * len(long)), "--body-limit-bytes",
                           str(8 * len(long)))
    try:
        replies: list[object] = []

        def send() -> None:
            replies.append(server.request("POST", "/v1/jobs", long))

        threads = [threading.Thread(target=send) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        statuses = sorted(r.status for r in replies)  # type: ignore[attr-defined]
        assert statuses == [202, 202, 503]
        full = next(r for r in replies if r.status == 503)  # type: ignore[attr-defined]
        assert error_code(full) == "jobs_queue_full" and full.headers["retry-after"] == "10"  # type: ignore[attr-defined]
        ids = [json.loads(r.body)["id"] for r in replies if r.status == 202]  # type: ignore[attr-defined]
        for job_id in ids:
            wait_for(server, job_id)
        # Beside the two results, an upload of 3 x that size does not fit in --jobs-max-bytes.
        reply = server.request("POST", "/v1/jobs", long * 3)
        assert reply.status == 507 and error_code(reply) == "insufficient_storage"
    finally:
        server.stop()


def test_finished_jobs_expire_with_their_files(small_model: Path, tmp_path: Path) -> None:
    jobs_dir = tmp_path / "jobs"
    server = ServerProcess(small_model, "--jobs-dir", str(jobs_dir), "--jobs-ttl-secs", "1")
    try:
        job_id = post_job(server, SHORT)
        wait_for(server, job_id)
        deadline = time.monotonic() + 30
        while server.request("GET", f"/v1/jobs/{job_id}").status == 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        reply = server.request("GET", f"/v1/jobs/{job_id}/result")
        assert reply.status == 404 and error_code(reply) == "job_not_found"
        assert leftovers(jobs_dir) == []
    finally:
        server.stop()


class FileSizeLimitedServer(ServerProcess):
    """A server whose process may not write files over ``limit`` bytes (RLIMIT_FSIZE): a full
    disk as the jobs directory sees it (write fails with EFBIG), without a tmpfs."""

    def __init__(self, model_dir: Path, *args: str, limit: int) -> None:
        popen = subprocess.Popen

        def limited(*a: object, **k: object) -> subprocess.Popen[str]:
            def setlimit() -> None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

            return popen(*a, preexec_fn=setlimit, **k)  # type: ignore[call-overload,no-any-return]

        with mock.patch.object(subprocess, "Popen", limited):
            super().__init__(model_dir, *args)


def test_a_full_disk_is_507_with_nothing_half_written(small_model: Path, tmp_path: Path) -> None:
    jobs_dir = tmp_path / "jobs"
    big = audio.wav_bytes(long_speech(100, seed=6))  # 3.2 MB
    server = FileSizeLimitedServer(small_model, "--jobs-dir", str(jobs_dir), limit=2_000_000)
    try:
        reply = server.request("POST", "/v1/jobs", big)
        assert reply.status == 507 and error_code(reply) == "insufficient_storage"
        assert leftovers(jobs_dir) == []
        with sqlite3.connect(f"file:{jobs_dir / 'jobs.sqlite3'}?mode=ro", uri=True) as db:
            assert db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 0
        # Nothing is left broken: a job that fits still runs.
        wait_for(server, post_job(server, SHORT))
    finally:
        server.stop()


def test_kill_9_loses_no_accepted_job(small_model: Path, tmp_path: Path) -> None:
    jobs_dir = tmp_path / "jobs"
    clips = [audio.wav_bytes(long_speech(seconds, seed=20 + i))
             for i, seconds in enumerate((90, 10, 10))]
    server = ServerProcess(small_model, "--jobs-dir", str(jobs_dir))
    try:
        ids = [post_job(server, clip) for clip in clips]
        wait_for(server, ids[0], ("running",))
        states = [status(server, job_id)["status"] for job_id in ids]
    finally:
        server.stop(signal.SIGKILL)
    assert states == ["running", "queued", "queued"]
    server = ServerProcess(small_model, "--jobs-dir", str(jobs_dir))
    try:
        assert "1 job(s) requeued after a restart" in server.log
        for job_id, clip in zip(ids, clips, strict=True):
            assert wait_for(server, job_id)["status"] == "done"
            result = server.request("GET", f"/v1/jobs/{job_id}/result")
            assert result.body == server.request("POST", "/v1/transcribe", clip).body
        assert sorted(leftovers(jobs_dir)) == sorted(f"{i}.json" for i in ids)
    finally:
        server.stop()


def test_damaged_audio_on_disk_fails_clearly_without_blocking_the_queue(
        small_model: Path, tmp_path: Path) -> None:
    jobs_dir = tmp_path / "jobs"
    server = ServerProcess(small_model, "--jobs-dir", str(jobs_dir))
    try:
        first = post_job(server, audio.wav_bytes(long_speech(90, seed=7)))
        damaged, missing, last = (post_job(server, SHORT) for _ in range(3))
    finally:
        # A graceful stop this time: the running job is left `running` and redone, as after
        # kill -9.
        assert server.stop(signal.SIGTERM) == 0
    path = jobs_dir / AUDIO_DIR / damaged
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF
    path.write_bytes(bytes(data))
    (jobs_dir / AUDIO_DIR / missing).unlink()
    server = ServerProcess(small_model, "--jobs-dir", str(jobs_dir))
    try:
        for job_id in (damaged, missing):
            body = wait_for(server, job_id, ("failed",))
            error = body["error"]
            assert isinstance(error, dict) and error["code"] == "job_audio_damaged"
            assert "damaged" in str(error["message"])
        wait_for(server, first)
        wait_for(server, last)
    finally:
        server.stop()


VAD_MODEL = Path(__file__).resolve().parents[2] / "shared/fixtures/vad/silero_vad.onnx"


@pytest.mark.skipif(not VAD_MODEL.is_file(),
                    reason="shared/fixtures/vad/silero_vad.onnx not present")
def test_a_job_uses_the_same_vad_windows_as_transcribe(small_model: Path,
                                                       tmp_path: Path) -> None:
    clip = audio.wav_bytes(np.concatenate([audio.speech_like(8, seed=30), audio.silence(6),
                                           audio.speech_like(9, seed=31)]))
    server = ServerProcess(small_model, "--jobs-dir", str(tmp_path / "jobs"), "--vad", "on",
                           "--vad-model", str(VAD_MODEL))
    try:
        for query in ("", "?vad=false"):
            job_id = post_job(server, clip, query)
            wait_for(server, job_id)
            assert server.request("GET", f"/v1/jobs/{job_id}/result").body == server.request(
                "POST", "/v1/transcribe" + query, clip).body, query
    finally:
        server.stop()
