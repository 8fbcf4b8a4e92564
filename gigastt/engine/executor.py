"""The single inference thread: it owns the model, and asyncio callers await the work they hand it.

Work is queued per session and served round-robin, live streams before bulk files; recognition
requests from different sessions are decoded together in one batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from gigastt.engine.recognizer import Recognizer, split_windows, transcript_of
from gigastt.engine.tokenizer import Token, Vocabulary
from gigastt.engine.transcript import Transcript, Word

log = logging.getLogger(__name__)

R = TypeVar("R")
T = TypeVar("T")

MAX_BATCH = 8


class ExecutorClosed(RuntimeError):
    """The executor is shutting down and accepts no more work."""


@dataclass(slots=True)
class _Job:
    future: concurrent.futures.Future[Any]
    work: Callable[[Any], Any] | None = None  # a plain callable, run alone
    item: Any = None  # or an item for the batch function, run with other sessions' items


class InferenceExecutor(Generic[R]):
    """Runs work against one resource ``R`` (the recognizer) on one dedicated thread.

    ``load`` runs on that thread too, so the model is created by, and only ever touched from, the
    thread that owns it. ``batch(resource, items)`` serves ``submit_item`` work: the thread takes
    the head item of up to ``MAX_BATCH`` sessions of the same class and hands them over at once.
    """

    def __init__(self, load: Callable[[], R], *,
                 batch: Callable[[R, list[Any]], list[Any]] | None = None,
                 name: str = "gigastt-inference") -> None:
        self._load = load
        self._batch = batch
        # Two rings of per-session queues: live streams are always served before bulk work.
        self._rings: tuple[OrderedDict[Hashable, deque[_Job]], ...] = (OrderedDict(),
                                                                         OrderedDict())
        self._wake = threading.Condition()
        self._closed = False
        self._ready: concurrent.futures.Future[R] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def start(self) -> R:
        """Start the thread and wait for the model to load; re-raises a load failure."""
        self._thread.start()
        return self._ready.result()

    def close(self, timeout: float | None = None) -> None:
        """Finish the work already queued, then stop the thread."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def pending(self) -> int:
        with self._wake:
            return sum(len(q) for ring in self._rings for q in ring.values())

    def _enqueue(self, session: Hashable, job: _Job, live: bool) -> None:
        with self._wake:
            if self._closed:
                raise ExecutorClosed("inference executor is closed")
            self._rings[0 if live else 1].setdefault(session, deque()).append(job)
            self._wake.notify()

    def submit(self, session: Hashable, work: Callable[[R], T], *,
               live: bool = False) -> concurrent.futures.Future[T]:
        """Queue ``work`` behind this session's earlier work; returns a thread-safe future.

        A future cancelled before the thread reaches it is skipped, so a caller that goes away
        costs nothing.
        """
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._enqueue(session, _Job(future, work=work), live)
        return future

    def submit_item(self, session: Hashable, item: Any, *,
                    live: bool = False) -> concurrent.futures.Future[Any]:
        """Queue an item for the batch function."""
        if self._batch is None:
            raise TypeError("this executor has no batch function")
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._enqueue(session, _Job(future, item=item), live)
        return future

    async def run(self, session: Hashable, work: Callable[[R], T], *, live: bool = False) -> T:
        """Await ``work`` from the event loop; cancelling the await cancels queued work."""
        return await asyncio.wrap_future(self.submit(session, work, live=live))

    async def run_item(self, session: Hashable, item: Any, *, live: bool = False) -> Any:
        return await asyncio.wrap_future(self.submit_item(session, item, live=live))

    def _take(self) -> list[_Job] | None:
        """The next job, or several batchable jobs of different sessions; None when closed."""
        with self._wake:
            while not any(self._rings):
                if self._closed:
                    return None
                self._wake.wait()
            ring = self._rings[0] if self._rings[0] else self._rings[1]
            first = next(iter(ring))
            taken = [self._pop(ring, first)]
            if taken[0].work is None:
                # One item per session per batch, so that batching never breaks round-robin.
                others = [s for s in ring if s != first and ring[s][0].work is None]
                taken += [self._pop(ring, s) for s in others[: MAX_BATCH - 1]]
            return taken

    @staticmethod
    def _pop(ring: OrderedDict[Hashable, deque[_Job]], session: Hashable) -> _Job:
        queue = ring.pop(session)
        job = queue.popleft()
        if queue:
            ring[session] = queue  # back of the ring: round-robin
        return job

    def _main(self) -> None:
        try:
            resource = self._load()
        except BaseException as exc:  # the caller of start() reports it
            self._ready.set_exception(exc)
            return
        self._ready.set_result(resource)
        while (jobs := self._take()) is not None:
            jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
            if not jobs:
                continue
            try:
                if jobs[0].work is not None:
                    results = [jobs[0].work(resource)]
                else:
                    assert self._batch is not None
                    results = self._batch(resource, [job.item for job in jobs])
            except BaseException as exc:  # delivered to the awaiting callers, never lost
                for job in jobs:
                    job.future.set_exception(exc)
            else:
                for job, result in zip(jobs, results, strict=True):
                    job.future.set_result(result)


def recognize_batch(recognizer: Recognizer, windows: list[Any]) -> list[Any]:
    """The batch function for recognition: 16 kHz windows in, tokens out."""
    return list(recognizer.tokens_many(windows))


def recognition_executor(load: Callable[[], Recognizer]) -> InferenceExecutor[Recognizer]:
    return InferenceExecutor(load, batch=recognize_batch)


async def recognize(executor: InferenceExecutor[Recognizer], session: Hashable,
                    samples: npt.NDArray[np.float32], *, live: bool = False) -> list[Token]:
    """Tokens of one window, computed on the inference thread (batched with other sessions)."""
    tokens: list[Token] = await executor.run_item(session, samples, live=live)
    return tokens


async def transcribe(
    executor: InferenceExecutor[Recognizer],
    vocab: Vocabulary,
    samples: npt.NDArray[np.float32],
) -> Transcript:
    """Recognise a whole file window by window, each window a separate (bulk) turn."""
    session = object()
    words: list[Word] = []
    for window in split_windows(samples):
        tokens = await recognize(executor, session, samples[window.start : window.stop])
        words += vocab.words(tokens, frame_offset=window.frame_offset)
    return transcript_of(words, samples.shape[0])
