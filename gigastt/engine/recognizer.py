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
from gigastt.engine.tokenizer import Token, join_words
from gigastt.engine.transcript import Transcript, Word
from gigastt.engine.vad import SileroVad

# One encoder frame = 4 feature hops of 160 samples. Windows start on this grid so that word
# times stay exact multiples of 40 ms from the start of the file.
FRAME_SAMPLES = 640
WINDOW_SECONDS = 20.0
# The cut is placed at the quietest encoder frame within this many seconds before a window's end.
CUT_SEARCH_SECONDS = 4.0

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Window:
    """A slice of the file in samples; ``start`` is a multiple of FRAME_SAMPLES."""

    start: int
    stop: int

    @property
    def frame_offset(self) -> int:
        return self.start // FRAME_SAMPLES


def split_windows(samples: F32, window_seconds: float = WINDOW_SECONDS) -> list[Window]:
    """Cut ``samples`` into windows of at most ``window_seconds``, each ending at a quiet frame."""
    total = samples.shape[0]
    limit = max(FRAME_SAMPLES, int(window_seconds * SAMPLE_RATE) // FRAME_SAMPLES * FRAME_SAMPLES)
    search = min(limit // 2, int(CUT_SEARCH_SECONDS * SAMPLE_RATE) // FRAME_SAMPLES * FRAME_SAMPLES)
    windows: list[Window] = []
    start = 0
    while total - start > limit:
        lo, hi = start + limit - search, start + limit
        blocks = samples[lo:hi].reshape(-1, FRAME_SAMPLES).astype(np.float64)
        energy = np.einsum("ij,ij->i", blocks, blocks)
        # Cut after the quietest frame; ties go to the latest to keep windows long.
        quietest = len(energy) - 1 - int(np.argmin(energy[::-1]))
        cut = lo + (quietest + 1) * FRAME_SAMPLES
        windows.append(Window(start, cut))
        start = cut
    windows.append(Window(start, total))
    return windows


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
        """Words of one window, timed from the start of the file."""
        tokens = self.tokens(samples[window.start : window.stop], hotwords)
        return self.model.vocab.words(tokens, frame_offset=window.frame_offset)

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
