"""The single inference thread: it owns the model, and asyncio callers await the work they hand it.

Work is queued per session and served round-robin, so a long upload cannot starve live streams.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

from gigastt.engine.recognizer import Recognizer, Window, split_windows, transcript_of
from gigastt.engine.transcript import Transcript, Word

log = logging.getLogger(__name__)

R = TypeVar("R")
T = TypeVar("T")

_Job = tuple[Callable[[R], object], "concurrent.futures.Future[object]"]


class ExecutorClosed(RuntimeError):
    """The executor is shutting down and accepts no more work."""


class InferenceExecutor(Generic[R]):
    """Runs callables against one resource ``R`` (the recognizer) on one dedicated thread.

    ``load`` runs on that thread too, so the model is created by, and only ever touched from,
    the thread that owns it.
    """

    def __init__(self, load: Callable[[], R], *, name: str = "gigastt-inference") -> None:
        self._load = load
        self._queues: OrderedDict[Hashable, deque[_Job[R]]] = OrderedDict()
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
            return sum(len(q) for q in self._queues.values())

    def submit(self, session: Hashable, work: Callable[[R], T]) -> concurrent.futures.Future[T]:
        """Queue ``work`` behind this session's earlier work; returns a thread-safe future.

        A future cancelled before the thread reaches it is skipped, so a caller that goes away
        costs nothing.
        """
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._wake:
            if self._closed:
                raise ExecutorClosed("inference executor is closed")
            self._queues.setdefault(session, deque()).append((work, future))  # type: ignore[arg-type]
            self._wake.notify()
        return future

    async def run(self, session: Hashable, work: Callable[[R], T]) -> T:
        """Await ``work`` from the event loop; cancelling the await cancels queued work."""
        return await asyncio.wrap_future(self.submit(session, work))

    def _next(self) -> _Job[R] | None:
        with self._wake:
            while not self._queues:
                if self._closed:
                    return None
                self._wake.wait()
            session, queue = self._queues.popitem(last=False)
            job = queue.popleft()
            if queue:
                self._queues[session] = queue  # back of the ring: round-robin
            return job

    def _main(self) -> None:
        try:
            resource = self._load()
        except BaseException as exc:  # the caller of start() reports it
            self._ready.set_exception(exc)
            return
        self._ready.set_result(resource)
        while (job := self._next()) is not None:
            work, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = work(resource)
            except BaseException as exc:  # delivered to the awaiting caller, never lost
                future.set_exception(exc)
            else:
                future.set_result(result)


def _window_job(
    samples: npt.NDArray[np.float32], window: Window
) -> Callable[[Recognizer], list[Word]]:
    return lambda recognizer: recognizer.window_words(samples, window)


async def transcribe(
    executor: InferenceExecutor[Recognizer],
    samples: npt.NDArray[np.float32],
    *,
    session: Hashable | None = None,
) -> Transcript:
    """Recognise a whole file window by window, each window a separate turn on the executor."""
    key = session if session is not None else object()
    words: list[Word] = []
    for window in split_windows(samples):
        words += await executor.run(key, _window_job(samples, window))
    return transcript_of(words, samples.shape[0])
