"""Runs accepted jobs one at a time, oldest first, on the bulk inference lane.

A job's progress is saved after every window; watchers (``/v1/jobs/{id}/events``) wait on
``changed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable

from gigastt import protocol
from gigastt.config import HOTWORDS_BOOST, Limits
from gigastt.engine.audio import (
    AudioError,
    AudioTooLongError,
    UnsupportedSampleRateError,
    open_audio,
)
from gigastt.engine.executor import InferenceExecutor
from gigastt.engine.files import FileRecognition
from gigastt.engine.hotwords import Hotwords, compile_phrases, parse_list
from gigastt.engine.recognizer import Recognizer, transcript_of
from gigastt.engine.tokenizer import Vocabulary
from gigastt.engine.transcript import Word
from gigastt.errors import AUDIO_TOO_LONG, REST_ERRORS, ErrorCode
from gigastt.jobs.store import AudioDamaged, Job, StorageFull, StoreThread, audio_file, log_id

log = logging.getLogger(__name__)

# How often finished jobs past --jobs-ttl-secs are swept (at most; a short TTL sweeps sooner).
SWEEP_SECS = 60.0
# After an error of the store itself (not of a job), the loop waits this long and goes on.
RETRY_SECS = 1.0

# Why a job failed, as its status shows it: a code and a fixed, client-safe message (decoder
# details are only logged, docs/architecture.md §14).
DAMAGED = ("job_audio_damaged", "The stored audio file is missing or damaged; send the file"
           " again.")
FAILURES: dict[type[Exception], tuple[str, str]] = {
    AudioDamaged: DAMAGED,
    # The stored file went away while it was read (a DELETE): as damaged, not an internal error.
    FileNotFoundError: DAMAGED,
    AudioTooLongError: ("audio_too_long", AUDIO_TOO_LONG),
    # The REST catalogue's codes and texts where it has them.
    UnsupportedSampleRateError: (ErrorCode.UNSUPPORTED_SAMPLE_RATE.value,
                                 REST_ERRORS[ErrorCode.UNSUPPORTED_SAMPLE_RATE].message),
    AudioError: (ErrorCode.INVALID_AUDIO.value, REST_ERRORS[ErrorCode.INVALID_AUDIO].message),
    StorageFull: ("insufficient_storage", "The jobs directory is full; the result could not"
                  " be stored."),
}
INTERNAL_FAILURE = ("transcription_error", "Transcription failed.")


def failure_of(exc: Exception) -> tuple[str, str]:
    for kind in type(exc).__mro__:
        if kind in FAILURES:
            return FAILURES[kind]
    return INTERNAL_FAILURE


class JobRunner:
    """The job loop: takes the oldest queued job, runs it, records its end, and so on.

    ``wake()`` after a job is accepted; ``cancel(id)`` stops the job if it is the one running
    (the store has already marked it ``cancelled``). ``changed`` is an event replaced on every
    change of any job, for watchers to wait on.
    """

    def __init__(self, db: StoreThread, executor: InferenceExecutor[Recognizer],
                 vocab: Vocabulary, limits: Callable[[], Limits]) -> None:
        self.db = db
        self.executor = executor
        self.vocab = vocab
        self.limits = limits
        self.changed = asyncio.Event()
        # D29: the server's phrase list and the boost a job's own list is compiled with.
        self.hotwords: Hotwords | None = None
        self.hotwords_boost = HOTWORDS_BOOST
        self._wake = asyncio.Event()
        self._current: tuple[str, asyncio.Task[None]] | None = None

    def wake(self) -> None:
        self._wake.set()

    def notify(self) -> None:
        event, self.changed = self.changed, asyncio.Event()
        event.set()

    def cancel(self, job_id: str) -> None:
        if self._current is not None and self._current[0] == job_id:
            self._current[1].cancel()

    async def run_forever(self) -> None:
        """Until cancelled (the drain); a job running then stays ``running`` in the database
        and is queued again at the next start (``JobStore.recover``)."""
        while True:
            self._wake.clear()  # before looking, so that a job accepted meanwhile wakes us
            try:
                job = await self.db.call(self.db.store.next_queued)
            except Exception:  # the store failed, not a job: never end the loop for it
                log.exception("jobs: cannot read the queue")
                await asyncio.sleep(RETRY_SECS)
                continue
            if job is None:
                await self._wake.wait()
                continue
            task = asyncio.ensure_future(self._run(job))
            self._current = (job.id, task)
            try:
                await asyncio.wait({task})
            except asyncio.CancelledError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                raise
            finally:
                self._current = None
            if not task.cancelled() and task.exception() is not None:
                log.error("job %s: the store failed while recording its state: %r",
                          log_id(job.id), task.exception())
                await asyncio.sleep(RETRY_SECS)
            self.notify()

    async def sweep_forever(self) -> None:
        """Remove finished jobs past ``--jobs-ttl-secs`` with their files."""
        while True:
            ttl = self.limits().jobs_ttl_secs
            try:
                if await self.db.call(self.db.store.expire, ttl):
                    self.notify()
            except Exception:
                log.exception("jobs: the expiry sweep failed")
            await asyncio.sleep(min(SWEEP_SECS, max(0.2, ttl / 4)) if ttl else SWEEP_SECS)

    async def _run(self, job: Job) -> None:
        store = self.db.store
        if not await self.db.call(store.start, job.id):
            return
        self.notify()
        started = time.monotonic()
        try:
            path = await asyncio.to_thread(audio_file, self.db.root, job)
            # Read from disk window by window: a job's memory does not grow with its length
            # (D30).
            source = await asyncio.to_thread(open_audio, path,
                                             max_seconds=self.limits().audio_seconds_cap)
            # The windows /v1/transcribe would use for these options (the VAD's, D28).
            options = json.loads(job.options)
            phrases = options.get("hotwords")
            hotwords = self.hotwords if phrases is None else compile_phrases(
                parse_list(phrases), self.vocab, self.hotwords_boost)
            recognition = FileRecognition(self.executor, self.vocab, source,
                                          vad=bool(options.get("vad", True)), hotwords=hotwords)
            words: list[Word] = []
            async for window, _, window_words in recognition.windows():
                words += window_words
                done = recognition.progress(window)
                if done is not None:
                    await self.db.call(store.set_progress, job.id, done)
                    self.notify()
            transcript = transcript_of(words, recognition.samples)
            # Hours of words take seconds of CPU to write out: off the event loop.
            body = (await asyncio.to_thread(protocol.transcribe_body, transcript)).encode()
            del words
            if await self.db.call(store.finish, job.id, body, transcript.duration):
                log.info("job %s: transcribed %.2f s of audio into %d words in %.3f s",
                         log_id(job.id),
                         transcript.duration, len(transcript.words), time.monotonic() - started)
        except asyncio.CancelledError:
            log.info("job %s: stopped while running", log_id(job.id))
            raise
        except Exception as exc:
            code, message = failure_of(exc)
            if code == INTERNAL_FAILURE[0]:
                log.exception("job %s: failed", log_id(job.id))
            else:
                log.info("job %s: failed: %s (%s)", log_id(job.id), code, type(exc).__name__)
            await self.db.call(store.fail, job.id, code, message)
