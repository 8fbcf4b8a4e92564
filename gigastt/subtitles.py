"""SRT and WebVTT rendering of a transcript: words grouped into short, readable cues.

The cue rules follow common subtitling practice (docs/api.md, `/v1/transcribe` "Exports"):

* a cue has at most ``MAX_LINES`` (2) lines of at most ``MAX_LINE_CHARS`` (42) characters, cut
  only between words; a word longer than that stands on a line of its own;
* a cue is on screen for at most ``MAX_CUE_SECONDS`` (7 s): a word whose last token would fall
  more than 7 s after the cue's first word starts the next cue;
* a new cue also starts after a sentence end (a word ending in ``.``, ``?``, ``!`` or ``…``) and
  after a pause of more than ``PAUSE_SECONDS`` (1 s) between words;
* a cue starts at its first word and ends ``LINGER_SECONDS`` after the start of its last word's
  last token, but never after the next cue starts, after the audio ends, or 7 s after its start;
* a two-line cue is cut where its lines are most even, the top line the shorter on a tie.

SRT numbers cues from 1 and writes ``HH:MM:SS,mmm``; WebVTT starts with ``WEBVTT`` and writes
``HH:MM:SS.mmm`` with ``&``, ``<`` and ``>`` escaped in the cue text. Lines end in ``\\n``, and
the header and every cue are followed by a blank line (as OpenAI's and ffmpeg's files are); a
transcript without words gives ``""`` (SRT) or ``"WEBVTT\\n\\n"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Literal

from gigastt.engine.transcript import Transcript, Word

__all__ = [
    "LINGER_SECONDS",
    "MAX_CUE_SECONDS",
    "MAX_LINES",
    "MAX_LINE_CHARS",
    "PAUSE_SECONDS",
    "Cue",
    "cues",
    "layout",
    "render_srt",
    "render_subtitles",
    "render_vtt",
]

MAX_LINE_CHARS = 42
MAX_LINES = 2
MAX_CUE_SECONDS = 7.0
PAUSE_SECONDS = 1.0
# A word's ``end`` is the start of its last token; a cue lingers this long after it.
LINGER_SECONDS = 0.6
SENTENCE_ENDS = (".", "?", "!", "…")

_MAX_CUE_MS = round(MAX_CUE_SECONDS * 1000)
_LINGER_MS = round(LINGER_SECONDS * 1000)


@dataclass(frozen=True, slots=True)
class Cue:
    """One subtitle: whole milliseconds (what SRT and WebVTT can express), lines as shown."""

    start_ms: int
    end_ms: int
    lines: tuple[str, ...]
    words: tuple[Word, ...]

    @property
    def start(self) -> float:
        return self.start_ms / 1000

    @property
    def end(self) -> float:
        return self.end_ms / 1000

    @property
    def text(self) -> str:
        return " ".join(self.lines)


def layout(words: Sequence[str]) -> tuple[str, ...] | None:
    """The lines of a cue holding ``words``, or None when they do not fit in ``MAX_LINES``."""
    if not words:
        return None
    # Length of words[:k] joined by spaces is ends[k] + k - 1.
    ends = [0, *accumulate(len(w) for w in words)]
    n = len(words)
    if ends[n] + n - 1 <= MAX_LINE_CHARS or n == 1:
        return (" ".join(words),)
    best: tuple[tuple[int, int], int] | None = None
    for k in range(1, n):
        top = ends[k] + k - 1
        bottom = ends[n] - ends[k] + n - k - 1
        if (top <= MAX_LINE_CHARS or k == 1) and (bottom <= MAX_LINE_CHARS or k == n - 1):
            key = (max(top, bottom), top)
            if best is None or key < best[0]:
                best = (key, k)
    if best is None:
        return None
    k = best[1]
    return " ".join(words[:k]), " ".join(words[k:])


def _starts_new_cue(group: list[Word], word: Word) -> bool:
    last = group[-1]
    return (
        last.word.endswith(SENTENCE_ENDS)
        or word.start - last.end > PAUSE_SECONDS
        or word.end - group[0].start > MAX_CUE_SECONDS
        or layout([w.word for w in (*group, word)]) is None
    )


def cues(words: Sequence[Word], duration: float | None = None) -> list[Cue]:
    """Group ``words`` (in time order) into cues by the rules in this module's docstring."""
    groups: list[list[Word]] = []
    for word in words:
        if groups and not _starts_new_cue(groups[-1], word):
            groups[-1].append(word)
        else:
            groups.append([word])
    starts = [_ms(group[0].start) for group in groups]
    limit = None if duration is None else _ms(duration)
    result: list[Cue] = []
    for index, group in enumerate(groups):
        start = starts[index]
        end = min(_ms(group[-1].end) + _LINGER_MS, start + _MAX_CUE_MS)
        if index + 1 < len(groups):
            end = min(end, starts[index + 1])
        if limit is not None:
            end = min(end, limit)
        lines = layout([w.word for w in group])
        assert lines is not None  # every group was built to fit
        result.append(Cue(start, max(end, start), lines, tuple(group)))
    return result


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def _stamp(millis: int, sep: str) -> str:
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{sep}{millis:03d}"


def _vtt_escape(line: str) -> str:
    # Cue text is markup in WebVTT: a bare "<" or "&" would start a tag or an entity, and "-->"
    # may not appear in a cue at all.
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_srt(transcript: Transcript) -> str:
    blocks = []
    for number, cue in enumerate(cues(transcript.words, transcript.duration), start=1):
        text = "\n".join(cue.lines)
        blocks.append(f"{number}\n{_stamp(cue.start_ms, ',')} --> {_stamp(cue.end_ms, ',')}\n"
                      f"{text}\n\n")
    return "".join(blocks)


def render_vtt(transcript: Transcript) -> str:
    blocks = ["WEBVTT\n\n"]
    for cue in cues(transcript.words, transcript.duration):
        text = "\n".join(_vtt_escape(line) for line in cue.lines)
        blocks.append(f"{_stamp(cue.start_ms, '.')} --> {_stamp(cue.end_ms, '.')}\n{text}\n\n")
    return "".join(blocks)


def render_subtitles(transcript: Transcript, kind: Literal["srt", "vtt"]) -> str:
    """The SRT or WebVTT file of ``transcript``."""
    return render_srt(transcript) if kind == "srt" else render_vtt(transcript)
