"""SRT and WebVTT rendering of a transcript: words grouped into short cues.

Cues break at sentence ends, long pauses and a maximum length, so they stay readable.
"""

from __future__ import annotations

from typing import Literal

from gigastt.engine.transcript import Transcript, Word

MAX_CUE_SECONDS = 6.0
MAX_CUE_WORDS = 12
PAUSE_SECONDS = 1.0
# A word's ``end`` is the start of its last token; a cue lingers this long after it.
LINGER_SECONDS = 0.6


def cues(words: tuple[Word, ...]) -> list[list[Word]]:
    groups: list[list[Word]] = []
    for word in words:
        current = groups[-1] if groups else None
        if (
            current is None
            or word.start - current[0].start > MAX_CUE_SECONDS
            or word.start - current[-1].end > PAUSE_SECONDS
            or len(current) >= MAX_CUE_WORDS
            or current[-1].word[-1:] in ".?!"
        ):
            groups.append([word])
        else:
            current.append(word)
    return groups


def _stamp(seconds: float, sep: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{sep}{millis:03d}"


def render_subtitles(transcript: Transcript, kind: Literal["srt", "vtt"] | str) -> str:
    groups = cues(transcript.words)
    sep = "," if kind == "srt" else "."
    blocks = ["WEBVTT\n"] if kind == "vtt" else []
    for index, group in enumerate(groups):
        start = group[0].start
        end = group[-1].end + LINGER_SECONDS
        if index + 1 < len(groups):
            end = min(end, groups[index + 1][0].start)
        end = max(min(end, transcript.duration), start)
        text = " ".join(w.word for w in group)
        number = f"{index + 1}\n" if kind == "srt" else ""
        blocks.append(f"{number}{_stamp(start, sep)} --> {_stamp(end, sep)}\n{text}\n")
    return "\n".join(blocks)
