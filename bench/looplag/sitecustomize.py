"""Benchmarks only: measures the event loop's own lag inside a ``gigastt serve`` process.

``bench/common.WatchedServer`` puts this directory on the server's PYTHONPATH. With
$BENCH_LOOP_LAG_FILE set, every event loop the process creates runs a task that sleeps 10 ms
again and again and appends each wake-up's CLOCK_MONOTONIC time and lateness (seconds) to that
file, so a harness can take any window's percentiles. The server's own code is not touched.
"""

from __future__ import annotations

import asyncio
import os
import time

INTERVAL = 0.01
FLUSH_EVERY = 100  # samples: one small write a second keeps the probe's own cost negligible


async def _watch(path: str) -> None:
    lines: list[str] = []
    with open(path, "a", encoding="ascii") as out:
        try:
            while True:
                start = time.monotonic()
                await asyncio.sleep(INTERVAL)
                now = time.monotonic()
                lines.append(f"{now:.6f} {now - start - INTERVAL:.6f}\n")
                if len(lines) >= FLUSH_EVERY:
                    out.write("".join(lines))
                    out.flush()
                    lines.clear()
        finally:
            out.write("".join(lines))


class _WatchedPolicy(asyncio.DefaultEventLoopPolicy):
    def __init__(self, path: str) -> None:
        super().__init__()
        self._path = path

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        loop = super().new_event_loop()
        loop.call_soon(loop.create_task, _watch(self._path))
        return loop


if os.environ.get("BENCH_LOOP_LAG_FILE"):
    asyncio.set_event_loop_policy(_WatchedPolicy(os.environ["BENCH_LOOP_LAG_FILE"]))
