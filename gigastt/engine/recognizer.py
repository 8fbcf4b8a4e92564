"""File recognition: long audio cut into windows at quiet points, each through encoder and decoder.

Windows keep the encoder near its trained length and below its 200 s limit
(docs/architecture.md §11).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gigastt.engine.ctc import ctc_biased, ctc_greedy
from gigastt.engine.decoding import (
    MAX_SYMBOLS_PER_FRAME,
    greedy_decode,
    greedy_decode_biased,
    greedy_decode_many,
)
from gigastt.engine.features import SAMPLE_RATE, log_mel
from gigastt.engine.hotwords import Hotwords
from gigastt.engine.model import GigaamModel
from gigastt.engine.tokenizer import Token, Vocabulary, join_words
from gigastt.engine.transcript import Transcript, Word
from gigastt.engine.vad import SileroVad

# One encoder frame = 4 feature hops of 160 samples. Windows start on this grid so that word
# times stay exact multiples of 40 ms from the start of the file.
FRAME_SAMPLES = 640
WINDOW_SECONDS = 20.0
# The cut is placed at the quietest encoder frame within this many seconds before a window's end.
CUT_SEARCH_SECONDS = 4.0
# Audio recognised beyond each cut, on both sides, whose tokens belong to the neighbour: the
# model then hears every word at a seam with context either side (docs/architecture.md §11,
# docs/benchmarks.md "Window seams"; 1 s measured against 0.5 and 2 s).
WINDOW_CONTEXT_SECONDS = 1.0

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Window:
    """A window of the file in samples: its own audio ``start``..``stop`` (``start`` a multiple
    of FRAME_SAMPLES), recognised with ``before`` and ``after`` samples of its neighbours' audio
    as context. Tokens in the context are the neighbours' (``owns``)."""

    start: int
    stop: int
    before: int = 0
    after: int = 0

    @property
    def audio_start(self) -> int:
        return self.start - self.before

    @property
    def audio_stop(self) -> int:
        return self.stop + self.after

    @property
    def frame_offset(self) -> int:
        """The file frame of the window's first encoder frame (its context's, if any)."""
        return self.audio_start // FRAME_SAMPLES

    def owns(self, frame: int) -> bool:
        """Whether a token at ``frame`` (counted from ``audio_start``) is this window's: on a
        side with context, only a token on this side of the cut."""
        at = self.audio_start + frame * FRAME_SAMPLES
        return (not self.before or at >= self.start) and (not self.after or at < self.stop)


def own_words(vocab: Vocabulary, window: Window, tokens: list[Token]
              ) -> tuple[list[Token], list[Word]]:
    """A window's own tokens (those in its own audio) and their words, timed from the file's
    start: every token comes from the one window that owns its frame, grouped into words as
    if the window had no context, so a seam splits words exactly where it did without it."""
    if window.before or window.after:
        tokens = [t for t in tokens if window.owns(t.frame)]
    return tokens, vocab.words(tokens, frame_offset=window.frame_offset)


class WindowCutter:
    """Windows of at most ``window_seconds`` of audio, each cut at a quiet frame, from audio fed
    block by block: a window is handed out as soon as its cut and its context after the cut
    are known, so at most a window and a block are held (D30). ``offset``: the file position of
    the first sample fed, a multiple of FRAME_SAMPLES; no context is taken before it or after
    the last sample (``finish``).
    """

    def __init__(self, offset: int = 0, window_seconds: float = WINDOW_SECONDS,
                 context_seconds: float = WINDOW_CONTEXT_SECONDS) -> None:
        frames = max(1, int(window_seconds * SAMPLE_RATE) // FRAME_SAMPLES)
        context = min(round(context_seconds * SAMPLE_RATE / FRAME_SAMPLES), (frames - 1) // 2)
        own = frames - 2 * context  # a cut window's own frames
        search = int(CUT_SEARCH_SECONDS * SAMPLE_RATE) // FRAME_SAMPLES
        self.full = frames * FRAME_SAMPLES  # a window with its context
        self.context = context * FRAME_SAMPLES
        self.limit = own * FRAME_SAMPLES
        self.search = max(1, min(own // 2, search)) * FRAME_SAMPLES  # whole frames
        self._base = offset  # the file position of the held audio's first sample
        self._start = offset  # ... and of the pending window's own first sample
        self._parts: list[F32] = []
        self._held = 0

    def feed(self, samples: F32) -> list[tuple[Window, F32]]:
        """The windows that ``samples`` completed, each with its audio (context included)."""
        if samples.shape[0]:
            self._parts.append(samples)
            self._held += samples.shape[0]
        own = self._start - self._base
        if min(own, self.context) + self._held - own <= self.full:
            return []
        held = self._joined()
        out: list[tuple[Window, F32]] = []
        # Cut only once more than a window is held: the last window may reach the file's end
        # and then takes no context after it.
        while min(own, self.context) + held.shape[0] - own > self.full:
            before = min(own, self.context)
            lo, hi = own + self.limit - self.search, own + self.limit
            blocks = held[lo:hi].reshape(-1, FRAME_SAMPLES).astype(np.float64)
            energy = np.einsum("ij,ij->i", blocks, blocks)
            # Cut after the quietest frame; ties go to the latest to keep windows long.
            quietest = len(energy) - 1 - int(np.argmin(energy[::-1]))
            cut = lo + (quietest + 1) * FRAME_SAMPLES
            after = min(self.context, held.shape[0] - cut)
            window = Window(self._base + own, self._base + cut, before, after)
            out.append((window, held[own - before : cut + after]))
            drop = max(0, cut - self.context)  # keep the next window's context before its cut
            held = held[drop:]
            self._base += drop
            self._start = window.stop
            own = cut - drop
        self._parts, self._held = [held], held.shape[0]
        return out

    def finish(self) -> tuple[Window, F32]:
        """The last window: what is held (empty only when nothing was fed)."""
        held = self._joined()
        own = self._start - self._base
        before = min(own, self.context)
        window = Window(self._start, self._base + held.shape[0], before, 0)
        self._start = self._base = window.stop
        self._parts, self._held = [], 0
        return window, held[own - before :]

    def _joined(self) -> F32:
        if len(self._parts) == 1:
            return self._parts[0]
        if not self._parts:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(self._parts)


def split_windows(samples: F32, window_seconds: float = WINDOW_SECONDS,
                  context_seconds: float = WINDOW_CONTEXT_SECONDS) -> list[Window]:
    """Cut ``samples`` into windows of at most ``window_seconds``, each ending at a quiet frame."""
    cutter = WindowCutter(0, window_seconds, context_seconds)
    windows = [window for window, _ in cutter.feed(samples)]
    return [*windows, cutter.finish()[0]]


class Recognizer:
    """Speech to tokens and words on one ``GigaamModel``; stateless, used by the inference lanes."""

    def __init__(self, model: GigaamModel, *, max_symbols: int = MAX_SYMBOLS_PER_FRAME,
                 vad: SileroVad | None = None) -> None:
        self.model = model
        self.max_symbols = max_symbols
        # D28: the optional Silero VAD, loaded with the model so both live on the lanes.
        self.vad = vad

    def encode(self, samples: F32) -> F32:
        """Encoder frames ``[D, T']`` of one window of 16 kHz audio (none if under 20 ms); for
        the CTC heads (D29), the frames' log-probabilities ``[T', V]``.

        Windows are encoded one at a time: the exported encoder has no attention mask, and even
        equal-length batches differ from B = 1 in the last bits while saving no time on the CPU
        (docs/benchmarks.md).
        """
        features = log_mel(samples)
        if features.shape[1] == 0:
            return np.zeros((0, 0), dtype=np.float32)
        if self.model.head.kind == "ctc":
            log_probs, valid = self.model.ctc_log_probs(
                features[None], np.array([features.shape[1]], dtype=np.int64))
            return np.asarray(log_probs[0, : int(valid[0])])
        encoded, lengths = self.model.encode(
            features[None], np.array([features.shape[1]], dtype=np.int64)
        )
        return np.asarray(encoded[0, :, : int(lengths[0])])

    def tokens_many(self, windows: Sequence[F32],
                    hotwords: Sequence[Hotwords | None] | None = None) -> list[list[Token]]:
        """Tokens of several windows (frames relative to each), decoded together; each window
        may be biased towards its own phrase list (D29), decoded on its own then."""
        encoded = [self.encode(w) for w in windows]
        biases = list(hotwords) if hotwords is not None else [None] * len(encoded)
        if self.model.head.kind == "ctc":
            blank = self.model.vocab.blank
            return [ctc_greedy(e, blank) if b is None else ctc_biased(e, blank, b)
                    for e, b in zip(encoded, biases, strict=True)]
        plain = [i for i, b in enumerate(biases) if b is None]
        results: list[list[Token]] = [[] for _ in encoded]
        if len(plain) == 1:
            results[plain[0]] = greedy_decode(self.model, encoded[plain[0]],
                                              max_symbols=self.max_symbols)
        elif plain:
            decoded = greedy_decode_many(self.model, [encoded[i] for i in plain],
                                         max_symbols=self.max_symbols)
            for i, tokens in zip(plain, decoded, strict=True):
                results[i] = tokens
        for i, bias in enumerate(biases):
            if bias is not None:
                results[i] = greedy_decode_biased(self.model, encoded[i], bias,
                                                  max_symbols=self.max_symbols)
        return results

    def tokens(self, samples: F32, hotwords: Hotwords | None = None) -> list[Token]:
        """Tokens of one window of 16 kHz audio (frames relative to its start)."""
        return self.tokens_many([samples], [hotwords])[0]

    def window_words(self, samples: F32, window: Window,
                     hotwords: Hotwords | None = None) -> list[Word]:
        """The window's own words (``own_words``), timed from the start of the file."""
        tokens = self.tokens(samples[window.audio_start : window.audio_stop], hotwords)
        return own_words(self.model.vocab, window, tokens)[1]

    def iter_windows(self, samples: F32, hotwords: Hotwords | None = None
                     ) -> Iterator[list[Word]]:
        for window in split_windows(samples):
            yield self.window_words(samples, window, hotwords)

    def transcribe(self, samples: F32, hotwords: Hotwords | None = None) -> Transcript:
        """Whole-file transcript of mono float32 16 kHz audio."""
        words = [w for chunk in self.iter_windows(samples, hotwords) for w in chunk]
        return transcript_of(words, samples.shape[0])


def transcript_of(words: list[Word], samples: int) -> Transcript:
    return Transcript(text=join_words(words), words=tuple(words), duration=samples / SAMPLE_RATE)
