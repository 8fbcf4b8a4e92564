"""Transcription progress of ``gigastt transcribe``: one line rewritten in place on a terminal.

Percent of the audio done, time elapsed, time left; nothing at all when stderr is not a terminal.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO


def clock_text(seconds: float | None) -> str:
    """``m:ss`` under an hour, ``h:mm:ss`` from there; ``--:--`` when unknown."""
    if seconds is None:
        return "--:--"
    whole = int(seconds + 0.5)
    hours, rest = divmod(whole, 3600)
    if hours:
        return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{rest // 60}:{rest % 60:02d}"


def progress_text(done: float, elapsed: float, audio_seconds: float) -> str:
    """The line for ``done`` (0..1 of the audio) after ``elapsed`` seconds: percent, elapsed,
    and an ETA extrapolated from the pace so far (unknown before the first window is done)."""
    done = min(max(done, 0.0), 1.0)
    eta = elapsed * (1.0 - done) / done if done > 0 else None
    return (f"transcribing {done * 100:5.1f}% of {clock_text(audio_seconds)} of audio,"
            f" elapsed {clock_text(elapsed)}, ETA {clock_text(eta)}")


class TerminalProgress:
    """The progress line on a terminal: ``update`` after each window, ``finish`` once.

    Each update rewrites the line with ``\\r`` and pads over a longer previous one; ``finish``
    draws 100 % and ends the line, so that whatever is printed next starts on a fresh line.
    """

    def __init__(self, stream: TextIO, audio_seconds: float, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.audio_seconds = audio_seconds
        self.clock = clock
        self.began = clock()
        self._width = 0
        self._done = 0.0
        self.update(0.0)

    def update(self, done: float) -> None:
        self._done = done
        text = progress_text(done, self.clock() - self.began, self.audio_seconds)
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)

    def finish(self) -> None:
        if self._done < 1.0:  # the last window's update drew 100 % already
            self.update(1.0)
        self.stream.write("\n")
        self.stream.flush()
