"""Process lifecycle: SIGTERM/SIGINT start the graceful drain, SIGHUP reloads limits.

Keeps the registry of live connections that the drain walks; the drain itself is a plain coroutine.
A SIGHUP that arrives before the server runs (model download or load) is held until it does.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported lazily: hold_hangups() runs before anything heavy is loaded
    from gigastt.server.http import ConnectionDriver

log = logging.getLogger(__name__)

# Long enough for a connection accepted just before the listener closed to reach track().
ACCEPT_SETTLE_SECS = 0.05

_held_hangups: list[int] = []


def hold_hangups() -> None:
    """From the start of ``gigastt serve``: a SIGHUP is remembered instead of killing the process
    (systemd's ExecReload may send one while the model is still being fetched or loaded)."""
    signal.signal(signal.SIGHUP, _hold_hangup)


def _hold_hangup(signum: int, frame: FrameType | None) -> None:
    _held_hangups.append(signum)


def release_hangups() -> None:
    """Back to the default action (commands other than ``serve``), delivering one held meanwhile."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    if _held_hangups:
        _held_hangups.clear()
        signal.raise_signal(signal.SIGHUP)


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
        if _held_hangups:  # after the handler is in place, so that none is lost in between
            _held_hangups.clear()
            log.info("Applying the SIGHUP received during start-up")
            loop.call_soon(on_reload)

    def uninstall(self, loop: asyncio.AbstractEventLoop) -> None:
        """Leave stop and reload signals ignored, not defaulted: closing the loop would otherwise
        restore the default action, and a late SIGTERM or SIGHUP would kill a process that is
        exiting cleanly (decision D1: signals during the drain are ignored)."""
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)

    def request_stop(self, name: str = "request") -> None:
        if self.stop_requested.is_set():
            log.info("%s during drain ignored", name)
            return
        self.signal_name = name
        self.stop_requested.set()

    def track(self, task: asyncio.Task[None], driver: ConnectionDriver | None = None) -> None:
        """Register the task of an accepted connection (``driver`` unless it is being refused).

        Called in the loop step that created the task, so no connection runs untracked; one
        accepted after the stop signal is told at once to close after its first request.
        """
        self.tasks.add(task)
        if driver is not None:
            self.connections.add(driver)
            if self.stop_requested.is_set():
                driver.close_when_idle()

        def forget(done: asyncio.Task[None]) -> None:
            self.tasks.discard(done)
            if driver is not None:
                self.connections.discard(driver)

        task.add_done_callback(forget)

    async def drain(self, window: float) -> int:
        """Close idle connections, let the others finish within ``window`` seconds.

        Call it after the listener has closed. Connections accepted just before reach ``track``
        a few loop turns later and are served like the others: the drain lets them arrive, then
        waits until no tracked task is left. Returns how many had to be cancelled.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + window
        for driver in list(self.connections):
            driver.close_when_idle()
        await asyncio.sleep(ACCEPT_SETTLE_SECS)
        while self.tasks and (left := deadline - loop.time()) > 0:
            await asyncio.wait(set(self.tasks), timeout=left)
        pending = set(self.tasks)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)
        return len(pending)
