"""The VAD lane: one thread that runs the Silero VAD over every live session's new audio,
batching the sessions' chunks into shared model calls (docs/architecture.md §3, D28).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import Future

import numpy as np
import numpy.typing as npt

from gigastt.engine.executor import LIVE_NICENESS, ExecutorClosed, lower_thread_priority
from gigastt.engine.vad import SileroVad, VadStream, run_streams

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]


class VadLane:
    """Speech probabilities for live sessions, off the event loop and off the inference lanes.

    A silent session must cost the VAD only (issue 18): its chunks never wait behind encoder
    passes, and what is waiting from all sessions goes into one batched call per chunk step.
    """

    def __init__(self, vad: SileroVad, *, niceness: int = LIVE_NICENESS) -> None:
        self._vad = vad
        self._niceness = niceness
        self._ready = threading.Condition()
        self._queue: list[tuple[VadStream, F32, Future[F32]]] = []
        self._closed = False
        self._thread = threading.Thread(target=self._main, name="gigastt-vad", daemon=True)
        self._thread.start()

    def submit(self, stream: VadStream, samples: F32) -> Future[F32]:
        """The probabilities of the chunks that ``samples`` (16 kHz) complete in ``stream``.

        One session's requests run in the order submitted; ``stream`` belongs to the lane from
        its first request on.
        """
        future: Future[F32] = Future()
        with self._ready:
            if self._closed:
                raise ExecutorClosed("the VAD lane is closed")
            self._queue.append((stream, samples, future))
            self._ready.notify()
        return future

    async def probabilities(self, stream: VadStream, samples: F32) -> F32:
        return await asyncio.wrap_future(self.submit(stream, samples))

    def close(self, timeout: float | None = None) -> None:
        """Refuse new work, drop what waits, and wait for the batch in flight (a fraction of a
        second: onnxruntime must not be running when the interpreter exits)."""
        with self._ready:
            self._closed = True
            waiting, self._queue = self._queue, []
            self._ready.notify()
        for _, _, future in waiting:
            future.cancel()
        self._thread.join(timeout)

    def _main(self) -> None:
        lower_thread_priority(self._niceness)
        while True:
            with self._ready:
                while not self._queue and not self._closed:
                    self._ready.wait()
                if not self._queue:
                    return
                batch, self._queue = self._queue, []
            self._run(batch)

    def _run(self, batch: list[tuple[VadStream, F32, Future[F32]]]) -> None:
        # A session may have several requests waiting: they become one run of its chunks.
        streams: dict[int, tuple[VadStream, list[tuple[int, Future[F32]]], list[F32]]] = {}
        try:
            for stream, samples, future in batch:
                _, requests, frames = streams.setdefault(id(stream), (stream, [], []))
                chunks = stream.frames(samples)
                frames.append(chunks)
                requests.append((chunks.shape[0], future))
            order = list(streams.values())
            results = run_streams(self._vad, [s for s, _, _ in order],
                                  [np.concatenate(f) for _, _, f in order])
        except Exception as exc:  # onnxruntime raises several unrelated types
            # Every waiting session hears of it; the lane itself goes on.
            log.exception("VAD failed")
            for _, _, future in batch:
                if future.set_running_or_notify_cancel():
                    future.set_exception(exc)
            return
        for (_, requests, _), probs in zip(order, results, strict=True):
            at = 0
            for count, future in requests:
                if future.set_running_or_notify_cancel():
                    future.set_result(probs[at : at + count])
                at += count
