"""Files through the inference lanes window by window as they are decoded (D30): decoding and
cutting in a worker thread one step ahead, the VAD and the recogniser on the bulk lane.

Memory is the input (bytes held, or nothing for a file on disk) plus a window or two of audio,
whatever the recording's length (docs/architecture.md §11).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from contextlib import aclosing
from typing import TypeVar, cast

import numpy as np

from gigastt.engine.audio import AudioSource, expected_samples, model_blocks
from gigastt.engine.executor import InferenceExecutor, recognize
from gigastt.engine.hotwords import Hotwords
from gigastt.engine.recognizer import F32, Recognizer, Window, own_words, transcript_of
from gigastt.engine.tokenizer import Token, Vocabulary
from gigastt.engine.transcript import Transcript, Word
from gigastt.engine.windows import FileWindows, Span, VadPass

T = TypeVar("T")

_END = object()


async def ahead(items: Iterator[T]) -> AsyncGenerator[T, None]:
    """``items`` advanced in a worker thread, one item ahead of the consumer, so that decoding
    the next window overlaps recognising this one and the event loop never decodes."""
    pending = asyncio.ensure_future(asyncio.to_thread(next, items, _END))
    try:
        while (item := await pending) is not _END:
            pending = asyncio.ensure_future(asyncio.to_thread(next, items, _END))
            yield cast(T, item)  # not _END
    finally:
        if not pending.done():
            pending.cancel()  # the thread finishes its step on its own; nobody reads it
        elif not pending.cancelled():
            pending.exception()  # read, so that an error after the consumer left is not logged


def rechunk(blocks: Iterator[F32], size: int) -> Iterator[F32]:
    """The blocks' samples in chunks of exactly ``size`` (the last may be shorter)."""
    held: list[F32] = []
    count = 0
    for block in blocks:
        held.append(block)
        count += block.shape[0]
        if count < size:
            continue
        joined = held[0] if len(held) == 1 else np.concatenate(held)
        whole = count // size * size
        for at in range(0, whole, size):
            yield joined[at : at + size]
        held, count = ([joined[whole:]], count - whole) if count > whole else ([], 0)
    if count:
        yield held[0] if len(held) == 1 else np.concatenate(held)


class FileRecognition:
    """One file's recognition: ``async for window, tokens, words in it.windows()``, or
    ``await it.transcript()``.

    With ``vad`` (D28) and the VAD loaded, the file is read twice: the VAD's reading plans the
    spans to recognise, then the recogniser's reading skips the pauses. Afterwards ``samples``
    is the file's length at 16 kHz and ``speech_samples`` what the VAD found to be speech
    (None when it did not run). ``expected`` is the length the header declares, for progress.
    """

    def __init__(self, executor: InferenceExecutor[Recognizer], vocab: Vocabulary,
                 source: AudioSource, *, vad: bool = True,
                 hotwords: Hotwords | None = None) -> None:
        self.executor = executor
        self.vocab = vocab
        self.source = source
        self.vad = vad
        self.hotwords = hotwords
        self.expected = expected_samples(source)
        self.samples = 0
        self.speech_samples: int | None = None
        self._session = object()

    def progress(self, window: Window) -> float | None:
        """The fraction of the file done once ``window`` is (None: the length is unknown)."""
        if not self.expected:
            return None
        return min(1.0, window.stop / self.expected)

    async def windows(self) -> AsyncIterator[tuple[Window, list[Token], list[Word]]]:
        """Each window as it is recognised: its own tokens (frames from ``window.frame_offset``)
        and words (timed from the file's start; ``own_words``); windows run on the bulk lane
        one at a time, so live work passes between them."""
        spans = await self._vad_spans() if self.vad else None
        cut = FileWindows(model_blocks(self.source), spans)
        async with aclosing(ahead(iter(cut))) as windows:
            async for window, audio in windows:
                tokens = await recognize(self.executor, self._session, audio,
                                         hotwords=self.hotwords)
                yield window, *own_words(self.vocab, window, tokens)
        if spans is None:  # with spans the VAD's reading counted them (and this one stops early)
            self.samples = cut.samples

    async def transcript(self) -> Transcript:
        words: list[Word] = []
        async for _, _, window_words in self.windows():
            words += window_words
        return transcript_of(words, self.samples)

    async def _vad_spans(self) -> list[Span] | None:
        """The VAD's reading, a block per bulk-lane turn (None: the VAD is not loaded)."""
        reading = VadPass()

        def feed(block: F32) -> Callable[[Recognizer], bool]:
            def work(recognizer: Recognizer) -> bool:
                if recognizer.vad is None:
                    return False
                reading.feed(recognizer.vad, block)
                return True
            return work

        def finish(recognizer: Recognizer) -> tuple[list[Span], int] | None:
            return None if recognizer.vad is None else reading.finish(recognizer.vad)

        async with aclosing(ahead(model_blocks(self.source))) as blocks:
            async for block in blocks:
                if not await self.executor.run(self._session, feed(block)):
                    return None
        planned = await self.executor.run(self._session, finish)
        if planned is None:
            return None
        spans, self.speech_samples = planned
        self.samples = reading.samples
        return spans
