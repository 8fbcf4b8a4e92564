"""What recognition produces: words with times and confidences, and whole transcripts.

Shared by the tokenizer, the recognizers and the wire formats, so it depends on nothing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Word:
    """One recognised word.

    ``start``/``end`` are seconds from the start of the audio (of the stream, when streaming);
    ``end`` is the start time of the word's last token, so a one-token word has ``end == start``.
    ``confidence`` holds a float32 value (the mean of its tokens' probabilities).
    """

    word: str
    start: float
    end: float
    confidence: float


@dataclass(frozen=True, slots=True)
class Transcript:
    """The result of recognising a whole file: ``duration`` is seconds of 16 kHz audio."""

    text: str
    words: tuple[Word, ...]
    duration: float
