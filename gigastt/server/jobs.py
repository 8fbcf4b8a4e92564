"""``/v1/jobs``: accept a file as a durable job (202), then its status, result, events and deletion.

Handlers only; the queue is ``gigastt.jobs`` (docs/api.md "Jobs", D31).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Final
from urllib.parse import parse_qsl

from gigastt import export, protocol
from gigastt.engine.transcript import Transcript, Word
from gigastt.errors import ErrorCode
from gigastt.jobs.runner import JobRunner
from gigastt.jobs.store import (
    FINISHED,
    TMP_DIR,
    Job,
    QueueFull,
    StorageFull,
    is_job_id,
    log_id,
    stage_file,
)
from gigastt.protocol import JSON
from gigastt.server import sse
from gigastt.server.http import Body, Reply, Request, Response, StreamingResponse

if TYPE_CHECKING:
    from gigastt.server.routes import ServerState

__all__ = ["ITEM_LABEL", "ITEM_METHODS", "ITEM_PREFIX", "PATH", "create", "item"]

log = logging.getLogger(__name__)

PATH: Final = "/v1/jobs"
ITEM_PREFIX: Final = "/v1/jobs/"
ITEM_LABEL: Final = "/v1/jobs/{id}"  # one metrics label for every job (D43)
ITEM_METHODS: Final = ("GET", "HEAD", "DELETE", "OPTIONS")
QUEUE_FULL_RETRY_SECS: Final = 10
# Events: a watcher re-reads the job at least this often, and sends a keep-alive comment after
# sse.KEEPALIVE_SECS without an event.
POLL_SECS: Final = 1.0

_JSON_TYPE: Final = (b"content-type", b"application/json")

# The job routes' own errors (docs/api.md "Jobs"): status, code, fixed message.
DISABLED: Final = (404, "jobs_disabled", "Jobs are not enabled on this server (--jobs-dir)")
NOT_FOUND: Final = (404, "job_not_found", "No such job")
NOT_DONE: Final = (409, "job_not_done", "The job has not finished yet; see its status")
NO_RESULT: Final = (409, "job_failed", "The job failed or was cancelled: it has no result")
QUEUE_FULL: Final = (503, "jobs_queue_full", "Too many jobs queued or running, try again later")
STORAGE_FULL: Final = (507, "insufficient_storage", "The jobs directory is full")


def _error(error: tuple[int, str, str], headers: list[tuple[bytes, bytes]] | None = None
           ) -> Response:
    status, code, message = error
    return Response(status, [_JSON_TYPE, *(headers or [])],
                    protocol.rest_error(code, message).encode())


def _json(status: int, body: JSON, headers: list[tuple[bytes, bytes]] | None = None
          ) -> Response:
    return Response(status, [_JSON_TYPE, *(headers or [])], protocol.dumps(body).encode())


def status_body(job: Job) -> JSON:
    """``GET /v1/jobs/{id}``: fixed key order (D14); times are Unix seconds or null."""
    error: JSON = None
    if job.error_code is not None:
        error = {"code": job.error_code, "message": job.error}
    return {"id": job.id, "status": job.status, "format": job.format,
            "progress": float(job.progress), "created": job.created, "started": job.started,
            "finished": job.finished, "duration": job.duration,
            "audio_bytes": job.audio_bytes, "error": error}


def _stage(tmp_dir: Path, data: bytearray) -> tuple[Path, str]:
    return stage_file(tmp_dir, data), hashlib.sha256(data).hexdigest()


def _query_format(query: str) -> bool:
    return any(key == "format" for key, _ in parse_qsl(query, keep_blank_values=True))


# --- POST /v1/jobs --------------------------------------------------------------------------


async def create(state: ServerState, request: Request, body: Body) -> Reply:
    """Accept the body as a job: 202 once its audio and row are on disk (never before)."""
    if request.method == "OPTIONS":
        return Response(204)
    from gigastt.server.routes import error_response, file_options, read_audio_body

    runner = state.jobs
    if runner is None:
        return _error(DISABLED)
    query = request.target.partition("?")[2]
    fmt = export.format_from_query(query)
    if fmt is None:
        return error_response(ErrorCode.UNSUPPORTED_FORMAT)
    checked = file_options(state, query)  # the same options as /v1/transcribe (D28, D29)
    if isinstance(checked, Response):
        return checked
    # D29: a job's own phrase list is kept with it (like its audio) until it has run.
    options = protocol.dumps({"vad": checked.vad} if checked.phrases is None
                             else {"vad": checked.vad, "hotwords": checked.phrases})
    db, limits = runner.db, state.limits
    # A cheap refusal before the upload; add() checks again, atomically.
    if await db.call(db.store.active_count) >= limits.jobs_max:
        return _error(QUEUE_FULL, [(b"retry-after", str(QUEUE_FULL_RETRY_SECS).encode())])
    data = await read_audio_body(state, body)
    if isinstance(data, Response):
        return data
    try:
        staged, sha256 = await asyncio.to_thread(_stage, db.root / TMP_DIR, data)
        job = await db.call(db.store.add, staged, fmt, len(data), sha256,
                            jobs_max=limits.jobs_max, max_bytes=limits.jobs_max_bytes,
                            options=options)
    except QueueFull:
        return _error(QUEUE_FULL, [(b"retry-after", str(QUEUE_FULL_RETRY_SECS).encode())])
    except StorageFull:
        return _error(STORAGE_FULL)
    except Exception:  # the directory itself failed (permissions, I/O): nothing was accepted
        log.exception("request %s: the job could not be stored", request.request_id)
        return error_response(ErrorCode.INTERNAL)
    log.info("request %s: job %s accepted (%d bytes)", request.request_id, log_id(job.id),
             len(data))
    runner.wake()
    runner.notify()
    location = (b"location", f"{ITEM_PREFIX}{job.id}".encode())
    return _json(202, {"id": job.id, "status": job.status}, [location])


# --- /v1/jobs/{id}[/result|/events] ---------------------------------------------------------


async def item(state: ServerState, request: Request, body: Body) -> Reply:
    """``/v1/jobs/{id}`` (GET, DELETE), ``.../result`` (GET), ``.../events`` (GET)."""
    job_id, _, sub = request.path.removeprefix(ITEM_PREFIX).partition("/")
    if sub not in ("", "result", "events"):
        return Response(404)  # like any unknown path
    if request.method == "OPTIONS":
        return Response(204)
    allowed = ITEM_METHODS if not sub else ("GET", "HEAD", "OPTIONS")
    if request.method not in allowed:
        return Response(405, [(b"allow", ",".join(allowed).encode())])
    runner = state.jobs
    if runner is None:
        return _error(DISABLED)
    if not is_job_id(job_id):
        return _error(NOT_FOUND)  # malformed: as unknown, never a 500
    job = await runner.db.call(runner.db.store.get, job_id)
    if job is None:
        return _error(NOT_FOUND)
    if request.method == "DELETE":
        return await _delete(runner, job)
    if sub == "result":
        return await _result(runner, job, request.target.partition("?")[2])
    if sub == "events":
        return StreamingResponse(200, list(sse.HEADERS), JobEvents(state, runner, job.id))
    return _json(200, status_body(job))


async def _delete(runner: JobRunner, job: Job) -> Response:
    """Cancel a queued or running job (200, its status now ``cancelled``), or remove a finished
    one with its files (204); the next DELETE of a removed job is a 404."""
    store = runner.db.store
    if job.status not in FINISHED:
        if await runner.db.call(store.cancel, job.id):
            runner.cancel(job.id)
            runner.notify()
            cancelled = await runner.db.call(store.get, job.id)
            if cancelled is not None:
                return _json(200, status_body(cancelled))
        now = await runner.db.call(store.get, job.id)  # it finished meanwhile
        if now is None or now.status not in FINISHED:
            return _error(NOT_FOUND)
    if not await runner.db.call(store.delete, job.id):
        return _error(NOT_FOUND)
    runner.notify()
    return Response(204)


def transcript_from_json(data: bytes) -> Transcript:
    """The stored ``/v1/transcribe`` body back as a transcript, for the other exports."""
    body = json.loads(data)
    words = tuple(Word(w["word"], w["start"], w["end"], w["confidence"]) for w in body["words"])
    return Transcript(body["text"], words, body["duration"])


def _render(data: bytes, fmt: export.Format) -> bytes:
    return export.render(transcript_from_json(data), fmt).encode()


async def _result(runner: JobRunner, job: Job, query: str) -> Response:
    from gigastt.server.routes import error_response

    fmt: export.Format | None = job.format  # type: ignore[assignment]
    if _query_format(query):
        fmt = export.format_from_query(query)
    if fmt is None or fmt not in export.FORMATS:
        return error_response(ErrorCode.UNSUPPORTED_FORMAT)
    if job.status in ("queued", "running"):
        return _error(NOT_DONE)
    if job.status != "done":
        return _error(NO_RESULT)
    try:
        data = await runner.db.call(runner.db.store.read_result, job.id)
    except FileNotFoundError:  # deleted or expired between the two reads
        return _error(NOT_FOUND)
    if fmt != "json":
        data = await asyncio.to_thread(_render, data, fmt)
    return Response(200, [(b"content-type", export.CONTENT_TYPES[fmt])], data)


class JobEvents:
    """``GET /v1/jobs/{id}/events``: ``progress`` events while the job is queued or running
    (whenever its status or progress changed), then one ``done``, ``failed`` or ``cancelled``
    event and the end of the stream. A job deleted meanwhile ends the stream without one."""

    def __init__(self, state: ServerState, runner: JobRunner, job_id: str) -> None:
        self._gen = self._produce(state, runner, job_id)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._gen

    async def aclose(self) -> None:
        await self._gen.aclose()

    @staticmethod
    async def _produce(state: ServerState, runner: JobRunner, job_id: str
                       ) -> AsyncGenerator[bytes, None]:
        last: tuple[str, float] | None = None
        quiet = 0.0
        loop = asyncio.get_running_loop()
        while not state.draining:
            changed = runner.changed
            job = await runner.db.call(runner.db.store.get, job_id)
            if job is None:
                return
            if job.status in FINISHED:
                yield sse.event(protocol.dumps(_final_event(job), sort_keys=True))
                return
            if (job.status, job.progress) != last:
                last = (job.status, job.progress)
                quiet = loop.time()
                yield sse.event(protocol.dumps({"type": "progress", "status": job.status,
                                                "progress": float(job.progress)},
                                               sort_keys=True))
            elif loop.time() - quiet >= sse.KEEPALIVE_SECS:
                quiet = loop.time()
                yield sse.KEEPALIVE
            try:
                async with asyncio.timeout(POLL_SECS):
                    await changed.wait()
            except TimeoutError:
                pass


def _final_event(job: Job) -> dict[str, JSON]:
    event: dict[str, JSON] = {"type": job.status, "status": job.status, "id": job.id}
    if job.status == "done":
        event["duration"] = job.duration
    if job.error_code is not None:
        event["error"] = {"code": job.error_code, "message": job.error}
    return event
