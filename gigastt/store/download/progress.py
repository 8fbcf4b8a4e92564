"""Download progress: a bar rewritten in place on a terminal, or a log line about every 10 %.
Told about one transfer attempt at a time (``start``, ``update``..., ``finish``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol, TextIO

log = logging.getLogger("gigastt.store")


class Progress(Protocol):
    """Told about one transfer attempt: ``start``, any number of ``update``, then ``finish``."""

    def start(self, name: str, total: int | None, offset: int) -> None: ...

    def update(self, done: int) -> None: ...

    def finish(self, done: int) -> None: ...


class NullProgress:
    def start(self, name: str, total: int | None, offset: int) -> None:
        pass

    def update(self, done: int) -> None:
        pass

    def finish(self, done: int) -> None:
        pass


def format_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    whole = int(seconds + 0.5)
    if whole >= 3600:
        return f"{whole // 3600}h{whole // 60 % 60:02d}m"
    return f"{whole // 60:d}:{whole % 60:02d}"


class _Rate:
    """Bytes, speed and ETA of one attempt (speed counts only this attempt's bytes)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.name = ""
        self.total: int | None = None
        self.offset = 0
        self.began = 0.0

    def begin(self, name: str, total: int | None, offset: int) -> None:
        self.name, self.total, self.offset, self.began = name, total, offset, self.clock()

    def speed(self, done: int) -> float | None:
        elapsed = self.clock() - self.began
        return (done - self.offset) / elapsed if elapsed > 0 and done > self.offset else None

    def eta(self, done: int) -> float | None:
        speed = self.speed(done)
        if self.total is None or speed is None:
            return None
        return max(0, self.total - done) / speed


class TerminalProgress:
    """One bar line on a terminal, rewritten in place with ``\\r`` at most ``interval`` apart."""

    def __init__(self, stream: TextIO, *, interval: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.interval = interval
        self.rate = _Rate(clock)
        self._last = float("-inf")
        self._width = 0

    def start(self, name: str, total: int | None, offset: int) -> None:
        self.rate.begin(name, total, offset)
        self._last = float("-inf")
        self._width = 0
        self._draw(offset)

    def update(self, done: int) -> None:
        if self.rate.clock() - self._last >= self.interval:
            self._draw(done)

    def finish(self, done: int) -> None:
        self._draw(done)
        self.stream.write("\n")
        self.stream.flush()

    def _draw(self, done: int) -> None:
        rate = self.rate
        self._last = rate.clock()
        speed = rate.speed(done)
        shown = f"{format_size(speed)}/s" if speed is not None else "--- B/s"
        if rate.total:
            percent = min(100.0, done * 100 / rate.total)
            bar = ("#" * int(percent / 5)).ljust(20, ".")
            text = (f"{rate.name} [{bar}] {percent:5.1f}% {format_size(done)}"
                    f" / {format_size(rate.total)}  {shown}  ETA {_duration(rate.eta(done))}")
        else:
            text = f"{rate.name} {format_size(done)}  {shown}"
        # Pad over the previous, possibly longer, line so that no stale characters remain.
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)


class LineProgress:
    """A plain line about every ``step`` percent, for logs and pipes (no ``\\r``)."""

    UNKNOWN_STEP = 64 * 1024 * 1024  # bytes between lines when the size is unknown

    def __init__(self, emit: Callable[[str], None] | None = None, *, step: int = 10,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.emit = emit or log.info
        self.step = step
        self.rate = _Rate(clock)
        self._next = 0

    def start(self, name: str, total: int | None, offset: int) -> None:
        self.rate.begin(name, total, offset)
        size = format_size(total) if total is not None else "unknown size"
        resumed = f", resuming at {format_size(offset)}" if offset else ""
        self.emit(f"Downloading {name} ({size}{resumed})")
        self._next = self._mark(offset) + self._unit

    @property
    def _unit(self) -> int:
        return self.step if self.rate.total else self.UNKNOWN_STEP

    def _mark(self, done: int) -> int:
        """Progress in reporting units: percent, or bytes when the size is unknown."""
        total = self.rate.total
        value = done * 100 // total if total else done
        return value - value % self._unit

    def update(self, done: int) -> None:
        total = self.rate.total
        value = done * 100 // total if total else done
        if value < self._next:
            return
        self._next = self._mark(done) + self._unit
        speed = self.rate.speed(done)
        shown = f", {format_size(speed)}/s" if speed is not None else ""
        if total:
            self.emit(f"{self.rate.name}: {value}% ({format_size(done)} / {format_size(total)}"
                      f"{shown})")
        else:
            self.emit(f"{self.rate.name}: {format_size(done)}{shown}")

    def finish(self, done: int) -> None:
        pass


def progress_for(stream: TextIO) -> Progress:
    """A bar when ``stream`` is a terminal, otherwise quiet lines through the log."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return TerminalProgress(stream) if tty else LineProgress()
