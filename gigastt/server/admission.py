"""The inference admission pool: ``--pool-size`` slots, FIFO waiters, timeouts, close on drain.

Every WS session, SSE stream and ``/v1/transcribe`` holds one slot (decisions.md D3).
"""

from __future__ import annotations

import asyncio
from collections import deque
from types import TracebackType

__all__ = ["AdmissionPool", "PoolClosed", "PoolTimeout", "Slot"]


class PoolTimeout(Exception):
    """No slot became free within the checkout timeout."""


class PoolClosed(Exception):
    """The pool was closed (shutdown) before or while waiting."""


class Slot:
    """One unit of admission; give it back with ``release()`` or by leaving ``async with``."""

    __slots__ = ("_pool", "_released")

    def __init__(self, pool: AdmissionPool) -> None:
        self._pool = pool
        self._released = False

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        """Return the slot; calling it again is a no-op, so every exit path may call it."""
        if not self._released:
            self._released = True
            self._pool._release()

    async def __aenter__(self) -> Slot:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __enter__(self) -> Slot:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class AdmissionPool:
    """A FIFO counting semaphore whose waiters may give up without losing capacity.

    Invariant: ``available > 0`` implies nobody is waiting, because a released slot is handed
    straight to the oldest live waiter. A waiter that gave up (timeout, cancellation) stays in
    the deque as a done future and is skipped, so hand-over never reaches a dead waiter (the
    slot would be lost for good: D3 in docs/decisions.md).
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("pool size must be at least 1")
        self._total = size
        self._free = size
        self._in_use = 0
        self._waiting = 0  # live (not yet resolved) futures in _queue
        self._queue: deque[asyncio.Future[Slot]] = deque()
        self._closed = False

    @property
    def total(self) -> int:
        return self._total

    @property
    def available(self) -> int:
        """Free slots; 0 once closed."""
        return self._free

    @property
    def waiters(self) -> int:
        """Callers currently queued for a slot."""
        return self._waiting

    @property
    def in_use(self) -> int:
        """Slots handed out and not yet released (also counted after close, for the drain)."""
        return self._in_use

    @property
    def closed(self) -> bool:
        return self._closed

    async def acquire(self, timeout: float | None) -> Slot:
        """Take a slot, waiting FIFO up to ``timeout`` seconds (None: no limit).

        Raises PoolTimeout or PoolClosed. If the calling task is cancelled, CancelledError
        propagates and any slot handed over at that very moment is passed on.
        """
        if self._closed:
            raise PoolClosed
        if self._free > 0:
            self._free -= 1
            self._in_use += 1
            return Slot(self)
        if timeout is not None and timeout <= 0:
            raise PoolTimeout
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Slot] = loop.create_future()
        self._queue.append(fut)
        self._waiting += 1
        # The pool resolves the future itself on expiry, so a timeout and a hand-over can never
        # both land on one waiter: whichever runs first wins and the other sees a done future.
        timer = loop.call_later(timeout, self._expire, fut) if timeout is not None else None
        try:
            return await fut
        except asyncio.CancelledError:
            if not fut.done():
                fut.cancel()
            if fut.cancelled():
                self._waiting -= 1
                self._compact()
            elif fut.exception() is None:
                # Handed a slot in the same tick as the cancellation: pass it on.
                fut.result().release()
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _expire(self, fut: asyncio.Future[Slot]) -> None:
        if not fut.done():
            self._waiting -= 1
            fut.set_exception(PoolTimeout())
            self._compact()

    def _compact(self) -> None:
        # Dead futures are skipped lazily; rebuild when they dominate, so a stream of timeouts
        # while every slot is held cannot grow the deque without bound.
        if len(self._queue) > 2 * self._waiting + 16:
            self._queue = deque(f for f in self._queue if not f.done())

    def _release(self) -> None:
        self._in_use -= 1
        if self._closed:
            return  # slots returned after close are discarded
        while self._queue:
            fut = self._queue.popleft()
            if not fut.done():
                self._waiting -= 1
                self._in_use += 1
                fut.set_result(Slot(self))
                return
        self._free += 1

    def close(self) -> None:
        """Fail every waiter with PoolClosed now; later acquires fail too. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._free = 0
        queue, self._queue = self._queue, deque()
        for fut in queue:
            if not fut.done():
                fut.set_exception(PoolClosed())
        self._waiting = 0
