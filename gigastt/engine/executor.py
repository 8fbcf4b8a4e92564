"""The inference lanes: two threads share the one model, and asyncio callers await their work.

Live streams and bulk files each have a lane; within a lane, work is queued per session, served
round-robin (sessions with urgent work first), and recognition requests from different sessions
are decoded together in one batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import sys
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from gigastt.engine.hotwords import Hotwords
from gigastt.engine.recognizer import Recognizer
from gigastt.engine.tokenizer import Token

log = logging.getLogger(__name__)

R = TypeVar("R")
T = TypeVar("T")

MAX_BATCH = 8
# Scheduling priorities, in nice steps below the process's own. The event loop keeps the process
# priority and so outranks inference (its latency stays low when the cores are saturated). A bulk
# window's encoder call runs for a second or more and cannot be interrupted, so bulk work has a
# lane of its own, well below the live lane: a live pass started meanwhile takes the cores first
# instead of waiting for the call to end (docs/benchmarks.md §5).
LIVE_NICENESS = 5
BULK_NICENESS = 15

LIVE, BULK = 0, 1


class ExecutorClosed(RuntimeError):
    """The executor is shutting down and accepts no more work."""


@dataclass(slots=True)
class _Job:
    future: concurrent.futures.Future[Any]
    work: Callable[[Any], Any] | None = None  # a plain callable, run alone
    item: Any = None  # or an item for the batch function, run with other sessions' items
    urgent: bool = False


def lower_thread_priority(niceness: int) -> None:
    """Make the calling thread ``niceness`` steps nicer (Linux; elsewhere a no-op).

    Only Linux applies ``setpriority`` to a single thread; other systems would renice the process.
    Threads created afterwards by the calling thread (onnxruntime's workers) inherit the value.
    """
    if sys.platform != "linux":
        return
    tid = threading.get_native_id()
    try:
        niceness += os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, niceness))
    except OSError as exc:  # a seccomp profile may forbid it; fairness degrades, nothing breaks
        log.warning("cannot lower the inference priority: %s", exc.strerror or exc)


class InferenceExecutor(Generic[R]):
    """Runs work against one resource ``R`` (the recognizer) on two threads, live and bulk.

    ``load`` runs on the live thread, which creates the model (and onnxruntime's worker threads,
    which inherit its priority); the bulk thread starts once it is loaded. Both run below the
    event loop's priority, bulk far below live. ``batch(resource, items)`` serves ``submit_item``
    work: a lane takes the head item of up to ``MAX_BATCH`` of its sessions at once. The resource
    must allow one call from each lane at a time (onnxruntime sessions do).

    Work submitted with ``urgent=True`` (a live session's final pass) is served before the lane's
    other work: a session holding urgent work goes ahead of every session that holds none, its
    earlier work included (a session's own order never changes), and a batch led by urgent work
    takes only urgent work, so a final never waits for other sessions' partials. Everything else
    stays round-robin, so under saturation each session's partials thin out alike
    (docs/architecture.md §10).
    """

    def __init__(self, load: Callable[[], R], *,
                 batch: Callable[[R, list[Any]], list[Any]] | None = None,
                 name: str = "gigastt-inference") -> None:
        self._load = load
        self._batch = batch
        # One ring of per-session queues per lane.
        self._rings: tuple[OrderedDict[Hashable, deque[_Job]], ...] = (OrderedDict(),
                                                                         OrderedDict())
        # Per lane: how many urgent jobs each session has queued (sessions with none are absent).
        self._urgent: tuple[dict[Hashable, int], ...] = ({}, {})
        self._wake = threading.Condition()
        self._closed = False
        self._ready: concurrent.futures.Future[R] = concurrent.futures.Future()
        self._threads = (
            threading.Thread(target=self._live_main, name=f"{name}-live", daemon=True),
            threading.Thread(target=self._bulk_main, name=f"{name}-bulk", daemon=True),
        )

    def start(self) -> R:
        """Start the lanes and wait for the model to load; re-raises a load failure."""
        self._threads[LIVE].start()
        resource = self._ready.result()
        self._threads[BULK].start()
        return resource

    def close(self, timeout: float | None = None) -> None:
        """Finish the work already queued, then stop the threads."""
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout)

    def _enqueue(self, session: Hashable, job: _Job, live: bool) -> None:
        lane = LIVE if live else BULK
        with self._wake:
            if self._closed:
                raise ExecutorClosed("inference executor is closed")
            self._rings[lane].setdefault(session, deque()).append(job)
            if job.urgent:
                urgent = self._urgent[lane]
                urgent[session] = urgent.get(session, 0) + 1
            self._wake.notify_all()

    def submit(self, session: Hashable, work: Callable[[R], T], *, live: bool = False,
               urgent: bool = False) -> concurrent.futures.Future[T]:
        """Queue ``work`` behind this session's earlier work; returns a thread-safe future.

        A future cancelled before a lane reaches it is skipped, so a caller that goes away costs
        nothing. ``urgent`` work goes ahead of the lane's other sessions (see the class).
        """
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._enqueue(session, _Job(future, work=work, urgent=urgent), live)
        return future

    def submit_item(self, session: Hashable, item: Any, *, live: bool = False,
                    urgent: bool = False) -> concurrent.futures.Future[Any]:
        """Queue an item for the batch function."""
        if self._batch is None:
            raise TypeError("this executor has no batch function")
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._enqueue(session, _Job(future, item=item, urgent=urgent), live)
        return future

    async def run(self, session: Hashable, work: Callable[[R], T], *, live: bool = False,
                  urgent: bool = False) -> T:
        """Await ``work`` from the event loop; cancelling the await cancels queued work."""
        return await asyncio.wrap_future(self.submit(session, work, live=live, urgent=urgent))

    async def run_item(self, session: Hashable, item: Any, *, live: bool = False,
                       urgent: bool = False) -> Any:
        return await asyncio.wrap_future(
            self.submit_item(session, item, live=live, urgent=urgent))

    def _take(self, lane: int) -> list[_Job] | None:
        """The lane's next job, or batchable jobs of several sessions; None when closed and idle."""
        ring, urgent = self._rings[lane], self._urgent[lane]
        with self._wake:
            while not ring:
                if self._closed:
                    return None
                self._wake.wait()
            # The first session in ring order that holds urgent work, else the ring's head.
            first = next((s for s in ring if s in urgent), None) if urgent else None
            lead = first is not None
            if first is None:
                first = next(iter(ring))
            taken = [self._pop(lane, first)]
            if taken[0].work is None:
                # One item per session per batch, so that batching never breaks round-robin; an
                # urgent batch stays urgent-only, so its cost is the finals' alone.
                others = [s for s in ring if s != first and ring[s][0].work is None
                          and (not lead or ring[s][0].urgent)]
                taken += [self._pop(lane, s) for s in others[: MAX_BATCH - 1]]
            return taken

    def _pop(self, lane: int, session: Hashable) -> _Job:
        ring, urgent = self._rings[lane], self._urgent[lane]
        queue = ring.pop(session)
        job = queue.popleft()
        if queue:
            ring[session] = queue  # back of the ring: round-robin
        if job.urgent:
            if urgent[session] == 1:
                del urgent[session]
            else:
                urgent[session] -= 1
        return job

    def _live_main(self) -> None:
        lower_thread_priority(LIVE_NICENESS)
        try:
            resource = self._load()
        except BaseException as exc:  # the caller of start() reports it
            self._ready.set_exception(exc)
            return
        self._ready.set_result(resource)
        self._serve(LIVE, resource)

    def _bulk_main(self) -> None:
        lower_thread_priority(BULK_NICENESS)
        self._serve(BULK, self._ready.result())

    def _serve(self, lane: int, resource: R) -> None:
        while (jobs := self._take(lane)) is not None:
            jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
            if not jobs:
                continue
            try:
                if jobs[0].work is not None:
                    results = [jobs[0].work(resource)]
                else:
                    assert self._batch is not None
                    results = list(self._batch(resource, [job.item for job in jobs]))
                    if len(results) != len(jobs):
                        raise RuntimeError(f"batch gave {len(results)} results for {len(jobs)}")
            except BaseException as exc:  # delivered to the awaiting callers, never lost
                # Only this pass's callers fail; the lane goes on serving the next jobs.
                for job in jobs:
                    job.future.set_exception(exc)
            else:
                for job, result in zip(jobs, results, strict=True):
                    job.future.set_result(result)


@dataclass(frozen=True, slots=True)
class Biased:
    """A window to recognise with a phrase list (D29); plain windows are bare arrays."""

    samples: npt.NDArray[np.float32]
    hotwords: Hotwords


def recognize_batch(recognizer: Recognizer, windows: list[Any]) -> list[Any]:
    """The batch function for recognition: 16 kHz windows (or ``Biased`` ones) in, tokens out."""
    samples = [w.samples if isinstance(w, Biased) else w for w in windows]
    biases = [w.hotwords if isinstance(w, Biased) else None for w in windows]
    return list(recognizer.tokens_many(samples, biases))


def recognition_executor(load: Callable[[], Recognizer]) -> InferenceExecutor[Recognizer]:
    return InferenceExecutor(load, batch=recognize_batch)


async def recognize(executor: InferenceExecutor[Recognizer], session: Hashable,
                    samples: npt.NDArray[np.float32], *, live: bool = False,
                    urgent: bool = False, hotwords: Hotwords | None = None) -> list[Token]:
    """Tokens of one window, computed on a lane (batched with that lane's other sessions).

    ``urgent``: a final pass, served before the lane's partial passes (finals first).
    ``hotwords``: the request's or session's compiled phrase list (D29), None for none.
    """
    item: Any = samples if hotwords is None else Biased(samples, hotwords)
    tokens: list[Token] = await executor.run_item(session, item, live=live, urgent=urgent)
    return tokens
