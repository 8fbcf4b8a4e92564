"""Admission pool tests: FIFO hand-over, timeouts, cancellation races, close, capacity (D3)."""

from __future__ import annotations

import asyncio
import gc
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

from gigastt.server.admission import AdmissionPool, PoolClosed, PoolTimeout, Slot


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run an async test on a fresh loop and fail on any error the loop swallowed."""
    problems: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: problems.append(ctx))
        await test()
        gc.collect()  # "Future exception was never retrieved" is reported on collection

    asyncio.run(main())
    assert problems == []


async def ticks(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def block(seconds: float) -> None:
    # Stall the loop so that several timers come due in one iteration, in deadline order.
    time.sleep(seconds)


def assert_idle(pool: AdmissionPool) -> None:
    assert (pool.available, pool.waiters, pool.in_use) == (pool.total, 0, 0)


def test_rejects_empty_pool() -> None:
    with pytest.raises(ValueError):
        AdmissionPool(0)


def test_immediate_acquire_and_release() -> None:
    async def body() -> None:
        pool = AdmissionPool(2)
        a = await pool.acquire(1)
        assert (pool.available, pool.in_use) == (1, 1)
        async with await pool.acquire(1) as b:
            assert isinstance(b, Slot) and pool.available == 0
        assert b.released and pool.available == 1
        a.release()
        a.release()  # idempotent: must not mint capacity
        with a:
            pass
        assert_idle(pool)

    run(body)


def test_fifo_order() -> None:
    async def body() -> None:
        pool = AdmissionPool(1)
        holder = await pool.acquire(1)
        order: list[int] = []

        async def waiter(i: int) -> None:
            async with await pool.acquire(5):
                order.append(i)
                await ticks()

        tasks = []
        for i in range(6):
            tasks.append(asyncio.create_task(waiter(i)))
            await ticks(1)
        assert pool.waiters == 6
        holder.release()
        await asyncio.gather(*tasks)
        assert order == list(range(6))
        assert_idle(pool)

    run(body)


def test_newcomer_does_not_jump_the_queue() -> None:
    async def body() -> None:
        pool = AdmissionPool(1)
        holder = await pool.acquire(1)
        first = asyncio.create_task(pool.acquire(5))
        await ticks()
        holder.release()  # handed to `first`, whose task has not run yet
        assert pool.available == 0
        with pytest.raises(PoolTimeout):
            await pool.acquire(0)
        (await first).release()
        assert_idle(pool)

    run(body)


def test_timeout() -> None:
    async def body() -> None:
        pool = AdmissionPool(1)
        holder = await pool.acquire(1)
        started = time.monotonic()
        with pytest.raises(PoolTimeout):
            await pool.acquire(0.02)
        assert time.monotonic() - started >= 0.015
        assert (pool.waiters, pool.available) == (0, 0)
        holder.release()
        assert_idle(pool)  # the timed-out waiter did not swallow the slot (D3)

    run(body)


def test_non_positive_timeout() -> None:
    async def body() -> None:
        pool = AdmissionPool(1)
        slot = await pool.acquire(0)
        with pytest.raises(PoolTimeout):
            await pool.acquire(0)
        with pytest.raises(PoolTimeout):
            await pool.acquire(-1)
        assert pool.waiters == 0
        slot.release()
        assert_idle(pool)

    run(body)


def test_release_and_cancel_in_the_same_tick() -> None:
    async def body() -> None:
        pool = AdmissionPool(1)
        holder = await pool.acquire(1)
        a = asyncio.create_task(pool.acquire(5))
        b = asyncio.create_task(pool.acquire(5))
        await ticks()
        holder.release()  # a's future now holds the slot...
        a.cancel()  # ...but a gives up before it could run
        with pytest.raises(asyncio.CancelledError):
            await a
        slot_b = await b
        assert pool.in_use == 1 and pool.waiters == 0
        slot_b.release()
        assert_idle(pool)

    run(body)


def test_release_and_cancel_of_the_only_waiter() -> None:
    async def body() -> None:
        pool = AdmissionPool(1)
        holder = await pool.acquire(1)
        a = asyncio.create_task(pool.acquire(5))
        await ticks()
        holder.release()
        a.cancel()
        with pytest.raises(asyncio.CancelledError):
            await a
        assert_idle(pool)

    run(body)


def test_cancel_then_release() -> None:
    async def body() -> None:
        pool = AdmissionPool(1)
        holder = await pool.acquire(1)
        a = asyncio.create_task(pool.acquire(5))
        b = asyncio.create_task(pool.acquire(5))
        await ticks()
        a.cancel()
        holder.release()
        with pytest.raises(asyncio.CancelledError):
            await a
        (await b).release()
        assert_idle(pool)

    run(body)


def test_cancel_via_outer_timeout() -> None:
    # A caller that wraps acquire in its own deadline (client went away) is a cancellation.
    async def body() -> None:
        pool = AdmissionPool(1)
        holder = await pool.acquire(1)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(pool.acquire(None), 0.01)
        assert pool.waiters == 0
        holder.release()
        assert_idle(pool)

    run(body)


def test_timeout_due_before_release_in_one_iteration() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        pool = AdmissionPool(1)
        holder = await pool.acquire(1)
        a = asyncio.create_task(pool.acquire(0.01))
        b = asyncio.create_task(pool.acquire(5))
        await ticks()
        loop.call_later(0.02, holder.release)
        block(0.05)  # a's deadline fires first, then the release, before a runs
        with pytest.raises(PoolTimeout):
            await a
        (await b).release()
        assert_idle(pool)

    run(body)


def test_release_due_before_timeout_in_one_iteration() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        pool = AdmissionPool(1)
        holder = await pool.acquire(1)
        loop.call_later(0.005, holder.release)
        a = asyncio.create_task(pool.acquire(0.01))
        await ticks()
        block(0.05)
        (await a).release()  # the slot arrived before the deadline: a got it
        assert_idle(pool)

    run(body)


def test_timeout_and_cancel_in_one_iteration() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        pool = AdmissionPool(1)
        holder = await pool.acquire(1)
        a = asyncio.create_task(pool.acquire(0.01))
        await ticks()
        loop.call_later(0.01, a.cancel)
        block(0.05)
        with pytest.raises(asyncio.CancelledError):
            await a
        assert pool.waiters == 0
        holder.release()
        assert_idle(pool)

    run(body)


def test_close_fails_waiters_and_later_acquires() -> None:
    async def body() -> None:
        pool = AdmissionPool(2)
        s1 = await pool.acquire(1)
        s2 = await pool.acquire(1)
        waiters = [asyncio.create_task(pool.acquire(None)) for _ in range(3)]
        await ticks()
        assert pool.waiters == 3
        pool.close()
        pool.close()  # idempotent
        assert pool.closed and pool.waiters == 0 and pool.available == 0
        results = await asyncio.gather(*waiters, return_exceptions=True)
        assert all(isinstance(r, PoolClosed) for r in results)
        with pytest.raises(PoolClosed):
            await pool.acquire(1)
        assert pool.in_use == 2
        s1.release()
        async with s2:
            pass
        assert (pool.available, pool.in_use) == (0, 0)  # returned slots are discarded

    run(body)


def test_close_with_free_slots() -> None:
    async def body() -> None:
        pool = AdmissionPool(3)
        pool.close()
        with pytest.raises(PoolClosed):
            await pool.acquire(0)
        assert pool.available == 0

    run(body)


def test_dead_waiters_do_not_accumulate() -> None:
    async def body() -> None:
        pool = AdmissionPool(1)
        holder = await pool.acquire(1)
        for _ in range(200):
            with pytest.raises(PoolTimeout):
                await pool.acquire(0.0001)
        tasks = [asyncio.create_task(pool.acquire(5)) for _ in range(100)]
        await ticks()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert len(pool._queue) <= 16
        holder.release()
        assert_idle(pool)

    run(body)


@pytest.mark.parametrize("seed", range(5))
def test_capacity_conserved_under_random_operations(seed: int) -> None:
    async def body() -> None:
        rng = random.Random(seed)
        pool = AdmissionPool(3)
        tasks: list[asyncio.Task[None]] = []
        outcomes = {"served": 0, "timeout": 0}

        async def user(hold: int, timeout: float | None) -> None:
            try:
                slot = await pool.acquire(timeout)
            except PoolTimeout:
                outcomes["timeout"] += 1
                return
            try:
                await ticks(hold)
                if rng.random() < 0.05:
                    await asyncio.sleep(0.0005)
            finally:
                slot.release()
            outcomes["served"] += 1

        pause: Callable[[], Awaitable[None]] = lambda: asyncio.sleep(0.0002)  # noqa: E731
        for _ in range(1000):
            op = rng.random()
            if op < 0.6:
                timeout = rng.choice([None, 0, 0.0003, 0.001, 0.01])
                tasks.append(asyncio.create_task(user(rng.randrange(4), timeout)))
            elif op < 0.9 and tasks:
                rng.choice(tasks).cancel()  # at whatever point that task happens to be
            else:
                block(rng.choice([0.0, 0.0005]))
            await ticks(rng.randrange(3))
            if rng.random() < 0.03:
                await pause()
            assert pool.available + pool.in_use == pool.total
            assert pool.available == 0 or pool.waiters == 0
        await asyncio.gather(*tasks, return_exceptions=True)
        assert_idle(pool)
        assert outcomes["served"] > 50 and outcomes["timeout"] > 0

    run(body)
