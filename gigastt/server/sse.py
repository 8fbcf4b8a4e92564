"""``POST /v1/transcribe/stream``: a decoded file run through the streaming recognizer, as SSE.

Events go through a bounded queue, so a client that stops reading pauses recognition.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import numpy as np
import numpy.typing as npt

from gigastt import protocol
from gigastt.engine.executor import InferenceExecutor, recognize
from gigastt.engine.recognizer import Recognizer
from gigastt.engine.streaming import Pass, StreamingRecognizer
from gigastt.engine.tokenizer import Vocabulary
from gigastt.server.admission import Slot

log = logging.getLogger(__name__)

CHUNK_SAMPLES = 16_000
QUEUE_EVENTS = 16
KEEPALIVE_SECS = 15.0
KEEPALIVE = b": \n\n"
HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def event(payload: str) -> bytes:
    return b"data: " + payload.encode() + b"\n\n"


async def _recognise(
    executor: InferenceExecutor[Recognizer],
    vocab: Vocabulary,
    samples: npt.NDArray[np.float32],
    shutdown: asyncio.Event,
    out: asyncio.Queue[bytes | None],
) -> None:
    """Feed 1 s chunks, run passes as they fall due, queue the events; ``None`` ends the stream."""
    recognizer = StreamingRecognizer(vocab)
    key = object()

    async def run(job: Pass) -> bool:
        try:
            tokens = await recognize(executor, key, job.samples)
        except Exception:
            log.exception("sse: inference failed")
            await out.put(event(protocol.sse_error()))
            return False
        for segment in recognizer.on_result(job, tokens):
            if segment.words:
                await out.put(event(protocol.sse_segment(segment.kind, segment.words,
                                                         time.time())))
        return True

    try:
        for start in range(0, samples.shape[0], CHUNK_SAMPLES):
            if shutdown.is_set():
                return  # server.md §3.2: stop silently before the next chunk
            recognizer.feed(samples[start : start + CHUNK_SAMPLES])
            job = recognizer.next_pass()
            if job is not None and not await run(job):
                return
        await run(recognizer.finish())
    finally:
        await out.put(None)


async def stream(
    executor: InferenceExecutor[Recognizer],
    vocab: Vocabulary,
    samples: npt.NDArray[np.float32],
    slot: Slot,
    shutdown: asyncio.Event,
) -> AsyncIterator[bytes]:
    """The response body: events as they come, a keep-alive comment after 15 s of quiet."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_EVENTS)
    worker = asyncio.ensure_future(_recognise(executor, vocab, samples, shutdown, queue))
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), KEEPALIVE_SECS)
            except TimeoutError:
                yield KEEPALIVE
                continue
            if item is None:
                return
            yield item
    finally:
        worker.cancel()
        slot.release()
