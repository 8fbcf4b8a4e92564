"""``POST /v1/transcribe/stream``: a file run through the streaming recognizer as it is decoded,
as SSE.

Events go through a bounded queue, so a client that stops reading pauses recognition.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import numpy as np
import numpy.typing as npt

from gigastt import protocol
from gigastt.engine.audio import (
    MODEL_RATE,
    AudioError,
    AudioSource,
    AudioTooLongError,
    expected_samples,
    model_blocks,
)
from gigastt.engine.executor import InferenceExecutor, recognize
from gigastt.engine.files import ahead, rechunk
from gigastt.engine.hotwords import Hotwords
from gigastt.engine.recognizer import Recognizer
from gigastt.engine.streaming import Pass, StreamingRecognizer
from gigastt.engine.tokenizer import Vocabulary
from gigastt.engine.vad import VadStream
from gigastt.errors import AUDIO_TOO_LONG, REST_ERRORS, ErrorCode
from gigastt.server.admission import Slot
from gigastt.server.metrics import ServerMetrics

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]

CHUNK_SAMPLES = 16_000
QUEUE_EVENTS = 16
KEEPALIVE_SECS = 15.0
KEEPALIVE = b": \n\n"
HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def event(payload: str) -> bytes:
    return b"data: " + payload.encode() + b"\n\n"


# The stream's end when decoding finds bad samples, or more audio than the cap (a header that
# declared no length or too little): the REST route's code, and its text or the cap's.
INVALID_AUDIO = event(protocol.sse_error(ErrorCode.INVALID_AUDIO.value,
                                         REST_ERRORS[ErrorCode.INVALID_AUDIO].message))
TOO_LONG = event(protocol.sse_error(ErrorCode.INVALID_AUDIO.value, AUDIO_TOO_LONG))


def progress_event(done: float) -> bytes:
    """``{"progress":<fraction of the file fed and recognised>,"type":"progress"}``."""
    return event(protocol.dumps({"type": "progress", "progress": round(done, 4)},
                                sort_keys=True))


async def recognise(
    executor: InferenceExecutor[Recognizer],
    vocab: Vocabulary,
    source: AudioSource,
    shutdown: asyncio.Event,
    out: asyncio.Queue[bytes | None],
    *,
    progress: bool = False,
    vad: bool = False,
    metrics: ServerMetrics | None = None,
    hotwords: Hotwords | None = None,
) -> None:
    """Feed 1 s chunks as they are decoded, run passes as they fall due, queue the events
    (``EventStream`` ends the stream, with the error event if this raises). Samples only a
    decoder can find bad (a NaN, a damaged frame) end the stream with an ``invalid_audio``
    error event: the status line went out long before (docs/api.md).

    ``progress`` (``?progress=true``): between segments, a ``progress`` event each time another
    whole percent of the file has been recognised (of the length its header declares; one
    event at the end when it declares none); without it the events are exactly as before.

    ``vad`` (D28: loaded, not ``?vad=false``): the VAD judges each chunk on the bulk lane first,
    and only speech is recognised, as in a live session (docs/architecture.md §10).

    Cancelled when the client is gone: the pass awaited then is dropped from the executor's queue
    if no lane has started it, and no later pass is submitted.
    """
    # SSE events carry no commits: a partial only when the text changed (docs/api.md).
    recognizer = StreamingRecognizer(vocab, commit_policy="on_finalize", vad=vad)
    key = object()
    vad_stream = VadStream(MODEL_RATE) if vad else None

    def judge(stream: VadStream, audio: F32) -> Callable[[Recognizer], F32]:
        def work(resource: Recognizer) -> F32:
            assert resource.vad is not None  # `vad` is only asked for when it is loaded
            return stream.feed(resource.vad, audio)
        return work

    async def run(job: Pass) -> None:
        tokens = await recognize(executor, key, job.samples, hotwords=hotwords)
        for segment in recognizer.on_result(job, tokens):
            if segment.words:
                await out.put(event(protocol.sse_segment(segment.kind, segment.words,
                                                         time.time())))

    expected = expected_samples(source)
    fed = 0
    shown = 0  # whole percent last reported
    chunks = ahead(rechunk(model_blocks(source), CHUNK_SAMPLES))
    try:
        async for chunk in chunks:
            if shutdown.is_set():
                return  # the drain: stop silently before the next chunk (docs/runbook.md)
            recognizer.feed(chunk)
            fed += chunk.shape[0]
            if vad_stream is not None:
                audio = recognizer.vad_audio()
                probabilities = await executor.run(key, judge(vad_stream, audio))
                recognizer.on_vad(probabilities)
                if metrics:
                    metrics.vad_chunks("stream", probabilities, vad_stream.hop / MODEL_RATE)
            while (job := recognizer.next_pass()) is not None:
                await run(job)
            done = min(1.0, fed / expected) if expected else 0.0
            if progress and int(done * 100) > shown:
                shown = int(done * 100)
                await out.put(progress_event(done))
    except AudioError as exc:
        log.info("event stream: undecodable audio (%s)", type(exc).__name__)
        await out.put(TOO_LONG if isinstance(exc, AudioTooLongError) else INVALID_AUDIO)
        return
    finally:
        await chunks.aclose()  # the decoder thread's step, when the stream ends early
    recognizer.finish()
    while (job := recognizer.next_pass()) is not None:
        await run(job)
    if progress and shown < 100:
        await out.put(progress_event(1.0))


class EventStream:
    """A response body of events as they come, with a keep-alive comment after 15 s of quiet.

    ``produce`` (``recognise`` here, the OpenAI route's deltas) starts at once and puts events on
    a bounded queue, ``None`` last; ``aclose()`` (the driver always calls it) stops it and gives
    the slot back, whether the stream ended, the client went away or the head was never sent.
    """

    def __init__(self, produce: Callable[[asyncio.Queue[bytes | None]], Awaitable[None]],
                 slot: Slot, failed: bytes) -> None:
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_EVENTS)
        self._slot = slot
        self._worker = asyncio.ensure_future(self._run(produce, failed))

    async def _run(self, produce: Callable[[asyncio.Queue[bytes | None]], Awaitable[None]],
                   failed: bytes) -> None:
        """``produce``, then ``None`` to end the body; ``failed`` (the route's error event)
        first if it raised."""
        try:
            await produce(self._queue)
        except Exception:
            log.exception("event stream: recognition failed")
            await self._queue.put(failed)
        # Not in a `finally`: once cancelled, nobody reads the queue, and a put could wait for ever.
        await self._queue.put(None)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> bytes:
        try:
            async with asyncio.timeout(KEEPALIVE_SECS):
                item = await self._queue.get()
        except TimeoutError:
            return KEEPALIVE
        if item is None:
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        self._worker.cancel()
        self._slot.release()
