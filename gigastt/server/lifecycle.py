"""Process lifecycle: SIGTERM/SIGINT start the graceful drain, SIGHUP reloads limits.

Keeps the registry of live connections that the drain walks; the drain itself is a plain coroutine.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from gigastt.server.http import ConnectionDriver

log = logging.getLogger(__name__)


class DrainController:
    """Tracks live connections and turns the first stop signal into one orderly drain."""

    def __init__(self) -> None:
        self.connections: set[ConnectionDriver] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.stop_requested = asyncio.Event()
        self.signal_name: str | None = None

    def install(self, loop: asyncio.AbstractEventLoop, on_reload: Callable[[], None]) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        loop.add_signal_handler(signal.SIGHUP, on_reload)

    def uninstall(self, loop: asyncio.AbstractEventLoop) -> None:
        """Leave stop signals ignored, not defaulted: closing the loop would otherwise restore
        the default action, and a late SIGTERM would kill a process that is exiting cleanly
        (decision D1: signals during the drain are ignored)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)

    def request_stop(self, name: str = "request") -> None:
        if self.stop_requested.is_set():
            log.info("%s during drain ignored", name)
            return
        self.signal_name = name
        self.stop_requested.set()

    def track(self, driver: ConnectionDriver, task: asyncio.Task[None]) -> None:
        self.connections.add(driver)
        self.tasks.add(task)

        def forget(done: asyncio.Task[None]) -> None:
            self.tasks.discard(done)
            self.connections.discard(driver)

        task.add_done_callback(forget)

    async def drain(self, window: float) -> int:
        """Close idle connections, let the others finish within ``window`` seconds.

        Returns how many were still running and had to be closed.
        """
        for driver in list(self.connections):
            driver.close_when_idle()
        if self.tasks:
            _, pending = await asyncio.wait(set(self.tasks), timeout=window)
        else:
            pending = set()
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)
        return len(pending)
