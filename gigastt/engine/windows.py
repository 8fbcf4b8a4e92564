"""File windows from VAD speech segments: pauses skipped, windows cut inside pauses (D28).

Pure functions; the VAD pass itself runs on the bulk lane (docs/architecture.md "VAD").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gigastt.config import (
    VAD_FILE_MERGE_GAP_SECONDS,
    VAD_FILE_MIN_SPEECH_MS,
    VAD_FILE_SPEECH_PAD_MS,
)
from gigastt.engine.features import SAMPLE_RATE
from gigastt.engine.recognizer import F32, FRAME_SAMPLES, WINDOW_SECONDS, Window, split_windows
from gigastt.engine.vad import SileroVad, VadParams, file_probabilities, speech_segments

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


def plan_windows(samples: F32, segments: list[tuple[int, int]], *,
                 window_seconds: float = WINDOW_SECONDS,
                 merge_gap_seconds: float = VAD_FILE_MERGE_GAP_SECONDS) -> list[Window]:
    """Windows covering every speech segment (padding included) and as little else as possible.

    Segments separated by less than ``merge_gap_seconds`` share a window while it stays within
    ``window_seconds`` (short pauses keep their context); a longer pause is skipped, so windows
    end inside pauses. Window starts lie on the 40 ms frame grid, so word times stay exact from
    the start of the file; a segment longer than a window is cut at quiet frames (split_windows).
    """
    limit = max(FRAME_SAMPLES, int(window_seconds * SAMPLE_RATE) // FRAME_SAMPLES * FRAME_SAMPLES)
    gap = int(merge_gap_seconds * SAMPLE_RATE)
    total = samples.shape[0]
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
    windows: list[Window] = []
    for start, end in spans:
        if end - start <= limit:
            windows.append(Window(start, end))
        else:
            windows += [Window(start + w.start, start + w.stop)
                        for w in split_windows(samples[start:end], window_seconds)]
    return windows


def vad_plan(vad: SileroVad, samples: F32, *, window_seconds: float = WINDOW_SECONDS,
             params: VadParams = FILE_VAD_PARAMS) -> WindowPlan:
    """Run the VAD over a whole 16 kHz file and plan its windows (CPU work: call it on a lane)."""
    if samples.shape[0] == 0:
        return WindowPlan([Window(0, 0)], 0)
    probs = file_probabilities(vad, np.asarray(samples, dtype=np.float32))
    segments = speech_segments(probs, samples.shape[0], params)
    speech = sum(min(end, samples.shape[0]) - start for start, end in segments)
    return WindowPlan(plan_windows(samples, segments, window_seconds=window_seconds), speech)
