"""The in-flight body budget: the bytes that all request bodies being read or held may take.

A request reserves its declared length (chunked: grown as it arrives) before its bytes are read.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["BUSY_RETRY_AFTER_SECS", "BodyBudget", "Reservation"]

# The Retry-After of a 503 `server_busy`: bodies in flight are freed as their requests finish.
BUSY_RETRY_AFTER_SECS = 1


class BodyBudget:
    """A byte counter with a ceiling read on every reservation, so a SIGHUP reload applies at once.

    Single-threaded: used only on the event loop.
    """

    __slots__ = ("_limit", "used")

    def __init__(self, limit: Callable[[], int]) -> None:
        self._limit = limit
        self.used = 0

    @property
    def limit(self) -> int:
        return self._limit()

    def reserve(self, size: int) -> Reservation | None:
        """A reservation of ``size`` bytes, or None when it does not fit beside the others."""
        reservation = Reservation(self)
        return reservation if reservation.grow(size) else None


class Reservation:
    """Bytes held for one request body; ``release()`` gives them back (again: a no-op)."""

    __slots__ = ("_budget", "size")

    def __init__(self, budget: BodyBudget) -> None:
        self._budget = budget
        self.size = 0

    def grow(self, extra: int) -> bool:
        """Hold ``extra`` more bytes; False (and nothing held) when they do not fit."""
        if extra > 0 and self._budget.used + extra > self._budget.limit:
            return False
        extra = max(extra, 0)
        self._budget.used += extra
        self.size += extra
        return True

    def release(self) -> None:
        self._budget.used -= self.size
        self.size = 0
