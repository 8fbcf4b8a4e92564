"""File windows as the audio is read: over the whole file, or over the VAD's speech spans with
pauses skipped and windows cut inside them (D28, D30).

No I/O and no threads; the VAD's own calls run on the bulk lane (docs/architecture.md "VAD").
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from gigastt.config import (
    VAD_FILE_MERGE_GAP_SECONDS,
    VAD_FILE_MIN_SPEECH_MS,
    VAD_FILE_SPEECH_PAD_MS,
)
from gigastt.engine.features import SAMPLE_RATE
from gigastt.engine.recognizer import F32, FRAME_SAMPLES, WINDOW_SECONDS, Window, WindowCutter
from gigastt.engine.vad import (
    FILE_BLOCK_SAMPLES,
    SileroVad,
    VadParams,
    VadStream,
    speech_segments,
)

# Files: no forced cut inside speech (the planner cuts long speech at its quietest frame, as
# split_windows does), wider padding and no minimum length (gigastt/config.py), otherwise
# onnx-asr's defaults.
FILE_VAD_PARAMS = VadParams(max_speech_duration_s=None, speech_pad_ms=VAD_FILE_SPEECH_PAD_MS,
                            min_speech_duration_ms=VAD_FILE_MIN_SPEECH_MS)


@dataclass(frozen=True, slots=True)
class WindowPlan:
    """The windows to recognise and how much of the file the VAD found to be speech."""

    windows: list[Window]
    speech_samples: int


Span = tuple[int, int]


def plan_spans(segments: list[tuple[int, int]], total: int, *,
               window_seconds: float = WINDOW_SECONDS,
               merge_gap_seconds: float = VAD_FILE_MERGE_GAP_SECONDS) -> list[Span]:
    """The stretches of the file to recognise: every speech segment (padding included) and as
    little else as possible.

    Segments separated by less than ``merge_gap_seconds`` share a span while it stays within
    ``window_seconds`` (short pauses keep their context); a longer pause is skipped, so windows
    end inside pauses. Span starts lie on the 40 ms frame grid, so word times stay exact from
    the start of the file; a span longer than a window is cut at quiet frames (WindowCutter).
    """
    limit = max(FRAME_SAMPLES, int(window_seconds * SAMPLE_RATE) // FRAME_SAMPLES * FRAME_SAMPLES)
    gap = int(merge_gap_seconds * SAMPLE_RATE)
    spans: list[list[int]] = []
    for start, end in segments:
        start, end = max(0, start), min(total, end)
        if end <= start:
            continue
        if spans and start - spans[-1][1] < gap and end - spans[-1][0] <= limit:
            spans[-1][1] = max(spans[-1][1], end)
            continue
        aligned = start // FRAME_SAMPLES * FRAME_SAMPLES
        if spans and aligned <= spans[-1][0]:  # within the window's first frame: one span
            spans[-1][1] = max(spans[-1][1], end)
            continue
        if spans and aligned < spans[-1][1]:
            spans[-1][1] = aligned  # never two windows over one sample
        spans.append([aligned, end])
    return [(start, end) for start, end in spans]


class FileWindows:
    """A file's 16 kHz blocks cut into windows as they are read, over ``spans`` only when given
    (the VAD's; otherwise the whole file): one window and one block held at a time (D30).

    Iterating yields each window with its samples; ``samples`` counts the audio read so far
    (after the end, the file's length; with spans, reading stops after the last one).
    """

    def __init__(self, blocks: Iterable[F32], spans: list[Span] | None = None, *,
                 window_seconds: float = WINDOW_SECONDS) -> None:
        self._blocks = blocks
        self._spans = spans
        self._window_seconds = window_seconds
        self.samples = 0

    def __iter__(self) -> Iterator[tuple[Window, F32]]:
        if self._spans is None:
            cutter = WindowCutter(0, self._window_seconds)
            for block in self._blocks:
                self.samples += block.shape[0]
                yield from cutter.feed(block)
            yield cutter.finish()
            return
        spans = iter(self._spans)
        span = next(spans, None)
        if span is None:
            return
        cutter = WindowCutter(span[0], self._window_seconds)
        for block in self._blocks:
            at, self.samples = self.samples, self.samples + block.shape[0]
            while span is not None and span[0] < self.samples:
                lo, hi = max(span[0], at), min(span[1], self.samples)
                if hi > lo:
                    yield from cutter.feed(block[lo - at : hi - at])
                if span[1] > self.samples:
                    break
                yield cutter.finish()
                span = next(spans, None)
                if span is None:
                    return  # nothing left to recognise: the rest is not even decoded
                cutter = WindowCutter(span[0], self._window_seconds)
        if span is not None and span[0] < self.samples:
            yield cutter.finish()  # the file ended inside the span (shorter than planned)


def plan_windows(samples: F32, segments: list[tuple[int, int]], *,
                 window_seconds: float = WINDOW_SECONDS,
                 merge_gap_seconds: float = VAD_FILE_MERGE_GAP_SECONDS) -> list[Window]:
    """The windows of ``plan_spans`` over a whole file held in memory."""
    spans = plan_spans(segments, samples.shape[0], window_seconds=window_seconds,
                       merge_gap_seconds=merge_gap_seconds)
    return [window for window, _ in FileWindows([samples], spans, window_seconds=window_seconds)]


class VadPass:
    """The VAD's reading of a file, block by block, before recognition: the probabilities of
    its 32 ms chunks (7 KB a minute) in, the spans to recognise out."""

    def __init__(self, params: VadParams = FILE_VAD_PARAMS) -> None:
        self._stream = VadStream(SAMPLE_RATE)
        self._probabilities: list[F32] = []
        self._params = params

    @property
    def samples(self) -> int:
        """The samples fed so far: after the last block, the file's length."""
        return self._stream.samples

    def feed(self, vad: SileroVad, block: F32) -> None:
        self._probabilities.append(self._stream.feed(vad, block))

    def finish(self, vad: SileroVad, *, window_seconds: float = WINDOW_SECONDS
               ) -> tuple[list[Span], int]:
        """The spans to recognise and the samples the VAD found to be speech."""
        probs = np.concatenate([*self._probabilities, self._stream.finish(vad)])
        segments = speech_segments(probs, self.samples, self._params)
        speech = sum(min(end, self.samples) - start for start, end in segments)
        return plan_spans(segments, self.samples, window_seconds=window_seconds), speech


def read_spans(vad: SileroVad, blocks: Iterable[F32], *, params: VadParams = FILE_VAD_PARAMS,
               window_seconds: float = WINDOW_SECONDS) -> tuple[list[Span], int, int]:
    """The VAD's whole reading of a file in one thread: the spans to recognise, the samples it
    found to be speech, and the file's length. (The server runs it a block per bulk-lane turn
    instead: engine/files.py.)"""
    reading = VadPass(params)
    for block in blocks:
        reading.feed(vad, block)
    spans, speech = reading.finish(vad, window_seconds=window_seconds)
    return spans, speech, reading.samples


def vad_plan(vad: SileroVad, samples: F32, *, window_seconds: float = WINDOW_SECONDS,
             params: VadParams = FILE_VAD_PARAMS) -> WindowPlan:
    """Run the VAD over a whole 16 kHz file held in memory and plan its windows (CPU work: on a
    lane)."""
    if samples.shape[0] == 0:
        return WindowPlan([Window(0, 0)], 0)
    blocks = (samples[at : at + FILE_BLOCK_SAMPLES]
              for at in range(0, samples.shape[0], FILE_BLOCK_SAMPLES))
    spans, speech, _ = read_spans(vad, blocks, params=params, window_seconds=window_seconds)
    windows = FileWindows([samples], spans, window_seconds=window_seconds)
    return WindowPlan([window for window, _ in windows], speech)
