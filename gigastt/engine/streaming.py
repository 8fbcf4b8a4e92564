"""Live recognition as a pure state machine: audio in, recognition passes out, partials/finals back.

The model is not a streaming model, so each pass re-recognises the utterance since the last final
(inference.md §9); the caller runs passes on the executor and feeds their tokens back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from gigastt.engine.audio import MODEL_RATE, Resampler
from gigastt.engine.features import frame_count
from gigastt.engine.recognizer import FRAME_SAMPLES
from gigastt.engine.tokenizer import Token, Vocabulary
from gigastt.engine.transcript import Word

F32 = npt.NDArray[np.float32]

PARTIAL_INTERVAL = 0.5
ENDPOINT_SILENCE = 0.6
MAX_UTTERANCE = 20.0
# After an endpoint the next utterance starts this far after the last token: inside the silence,
# so no word is cut, and on the encoder-frame grid, so word times stay exact.
_RESTART_FRAMES = 8
# On the utterance cap, words are finalised up to the quietest frame before the last 2 s.
_CAP_KEEP_SECONDS = 2.0
_CAP_SEARCH_SECONDS = 4.0
# Without words, only this much trailing audio is kept (a word may be starting in it).
_SILENCE_KEEP_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Pass:
    """A request to recognise ``samples`` (the utterance buffer as of ``length`` samples)."""

    samples: F32
    final: bool


@dataclass(frozen=True, slots=True)
class Segment:
    kind: Literal["partial", "final"]
    words: tuple[Word, ...]


class StreamingRecognizer:
    """Per-session state: resampler, utterance buffer, partial cadence, endpointing."""

    def __init__(
        self,
        vocab: Vocabulary,
        *,
        input_rate: int = MODEL_RATE,
        partial_interval: float = PARTIAL_INTERVAL,
        endpoint_silence: float = ENDPOINT_SILENCE,
        max_utterance: float = MAX_UTTERANCE,
    ) -> None:
        self._vocab = vocab
        self._resampler = Resampler(input_rate) if input_rate != MODEL_RATE else None
        self._interval = int(partial_interval * MODEL_RATE)
        self._endpoint_frames = round(endpoint_silence * MODEL_RATE / FRAME_SAMPLES)
        self._max_samples = int(max_utterance * MODEL_RATE)
        # Longest pass: past the cap every pass ends the utterance, so a session that fell behind
        # (a fast client, a saturated server) catches up in passes of bounded cost and memory,
        # never one pass over its whole backlog (the encoder also stops at 200 s).
        self._pass_limit = self._max_samples + self._interval
        self._store = np.zeros(self._interval, np.float32)
        self._size = 0  # the utterance buffer is self._store[: self._size]
        self._offset_frames = 0  # encoder frames from stream start to the utterance start
        self._recognised = 0  # how much of the buffer the last pass covered
        self._last_text = ""

    @property
    def _buffer(self) -> F32:
        return self._store[: self._size]

    @property
    def buffered_seconds(self) -> float:
        return self._size / MODEL_RATE

    @property
    def backlogged(self) -> bool:
        """True while a whole pass of audio waits beyond the pass in flight.

        The caller stops taking audio meanwhile (back-pressure): the next pass is already full, so
        buffering more only costs memory, and a client far ahead of real time could grow it
        without bound.
        """
        return self._size - self._recognised >= self._pass_limit

    def feed(self, samples: F32) -> None:
        """Append audio at the input rate."""
        self._append(samples if self._resampler is None else self._resampler.process(samples))

    def next_pass(self) -> Pass | None:
        """The pass to run now, if enough new audio has arrived since the last one."""
        if self._size - self._recognised < self._interval:
            return None
        self._recognised = min(self._size, self._pass_limit)
        return Pass(self._store[: self._recognised], final=False)

    def finish(self) -> Pass:
        """The last pass over everything buffered (stop, shutdown, session cap).

        Run the passes still due first: then the buffer is within one pass's limit.
        """
        if self._resampler is not None:
            self._append(self._resampler.flush())
            self._resampler = None
        self._recognised = self._size
        return Pass(self._buffer, final=True)

    def _append(self, samples: F32) -> None:
        # In place, growing by doubling: a pass in flight holds a view of the samples before
        # self._size, which appends never touch.
        end = self._size + samples.shape[0]
        if end > self._store.shape[0]:
            grown = np.empty(max(end, 2 * self._store.shape[0]), np.float32)
            grown[: self._size] = self._buffer
            self._store = grown
        self._store[self._size : end] = samples
        self._size = end

    def on_result(self, done: Pass, tokens: list[Token]) -> list[Segment]:
        """Turn a finished pass into the messages to send (at most one partial and one final)."""
        words = self._vocab.words(tokens, frame_offset=self._offset_frames)
        if done.final:
            self._restart(self._size // FRAME_SAMPLES * FRAME_SAMPLES)
            return [Segment("final", tuple(words))]
        frames = _encoder_frames(done.samples.shape[0])
        if not words:
            # Silence produces no messages; keep only a short tail so the buffer stays small.
            keep = int(_SILENCE_KEEP_SECONDS * MODEL_RATE) // FRAME_SAMPLES
            if frames > keep:
                self._restart((frames - keep) * FRAME_SAMPLES, done.samples.shape[0])
            return []
        end = self._endpoint(tokens, frames)
        if end is not None:
            final = self._vocab.words(tokens[: end + 1], frame_offset=self._offset_frames)
            cut = min(tokens[end].frame + 1 + _RESTART_FRAMES, frames) * FRAME_SAMPLES
            # Tokens after the pause are recognised again, at once, in the next utterance.
            self._restart(cut, done.samples.shape[0] if end == len(tokens) - 1 else 0)
            return [Segment("final", tuple(final))] if final else []
        if done.samples.shape[0] > self._max_samples:
            return self._cap(done, tokens)
        text = " ".join(w.word for w in words)
        if text == self._last_text:
            return []
        self._last_text = text
        return [Segment("partial", tuple(words))]

    def _endpoint(self, tokens: list[Token], frames: int) -> int | None:
        """Index of the last token before the first pause of ``endpoint_silence``, if any.

        Pauses are looked for between tokens too, not only at the end: a client that sends audio
        faster than real time delivers several utterances to one pass.
        """
        for i, token in enumerate(tokens):
            following = tokens[i + 1].frame if i + 1 < len(tokens) else frames
            if following - 1 - token.frame >= self._endpoint_frames:
                return i
        return None

    def _cap(self, done: Pass, tokens: list[Token]) -> list[Segment]:
        length = done.samples.shape[0]
        hi = (length - int(_CAP_KEEP_SECONDS * MODEL_RATE)) // FRAME_SAMPLES
        lo = max(1, hi - int(_CAP_SEARCH_SECONDS * MODEL_RATE) // FRAME_SAMPLES)
        blocks = done.samples[lo * FRAME_SAMPLES : hi * FRAME_SAMPLES].reshape(-1, FRAME_SAMPLES)
        energy = np.einsum("ij,ij->i", blocks, blocks, dtype=np.float64)
        cut_frame = lo + int(np.argmin(energy))
        kept = [t for t in tokens if t.frame < cut_frame]
        words = self._vocab.words(kept, frame_offset=self._offset_frames)
        self._restart(cut_frame * FRAME_SAMPLES)
        return [Segment("final", tuple(words))] if words else []

    def _restart(self, cut: int, recognised: int = 0) -> None:
        """Start a new utterance ``cut`` samples (a whole number of frames) into the buffer.

        ``recognised`` is how much of the buffer the finished pass covered: audio it already
        saw does not count as new audio towards the next pass.
        """
        self._store = self._store[cut : self._size].copy()
        self._size = self._store.shape[0]
        self._offset_frames += cut // FRAME_SAMPLES
        self._recognised = max(0, recognised - cut)
        self._last_text = ""


def _encoder_frames(samples: int) -> int:
    return (frame_count(samples) + 3) // 4
