"""The inference lanes: live beside bulk, round-robin across sessions, cancellation, errors, load
failure."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Iterator

import pytest

from gigastt.engine.executor import (
    BULK_NICENESS,
    LIVE_NICENESS,
    ExecutorClosed,
    InferenceExecutor,
)


class Resource:
    def __init__(self) -> None:
        self.log: list[str] = []
        self.thread = threading.get_ident()
        self.gate = threading.Event()


@pytest.fixture
def lanes() -> Iterator[tuple[InferenceExecutor[Resource], Resource]]:
    """A started executor over a fresh ``Resource``, closed after the test."""
    executor: InferenceExecutor[Resource] = InferenceExecutor(Resource)
    resource = executor.start()
    yield executor, resource
    executor.close(5)


def _niceness(_: Resource) -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_live_work_runs_on_the_loading_thread_and_bulk_work_on_a_nicer_one(
        lanes: tuple[InferenceExecutor[Resource], Resource]) -> None:
    """Both lanes run below the caller's priority (the event loop's), bulk below live."""
    executor, resource = lanes
    live = executor.submit("s", lambda r: threading.get_ident(), live=True).result(5)
    bulk = executor.submit("f", lambda r: threading.get_ident()).result(5)
    assert live == resource.thread and bulk not in (live, threading.get_ident())
    if sys.platform == "linux":
        here = _niceness(resource)
        assert executor.submit("s", _niceness, live=True).result(5) == min(
            19, here + LIVE_NICENESS)
        assert executor.submit("f", _niceness).result(5) == min(19, here + BULK_NICENESS)
        assert _niceness(resource) == here  # the process itself is untouched


def test_live_work_is_served_while_a_bulk_job_runs(
        lanes: tuple[InferenceExecutor[Resource], Resource]) -> None:
    executor, resource = lanes
    bulk = executor.submit("upload", lambda r: r.gate.wait(5))
    assert executor.submit("stream", lambda r: "partial", live=True).result(5) == "partial"
    assert not bulk.done()
    resource.gate.set()
    assert bulk.result(5) is True


def test_sessions_are_served_round_robin(
        lanes: tuple[InferenceExecutor[Resource], Resource]) -> None:
    executor, resource = lanes
    blocker = executor.submit("block", lambda r: r.gate.wait(5))
    futures = [executor.submit("upload", lambda r, i=i: r.log.append(f"u{i}"))
               for i in range(4)]
    futures += [executor.submit(f"stream{n}", lambda r, n=n: r.log.append(f"s{n}"))
                for n in range(2)]
    resource.gate.set()
    for f in [blocker, *futures]:
        f.result(5)
    # The upload queued four windows first, yet each stream is served after at most one.
    assert resource.log == ["u0", "s0", "s1", "u1", "u2", "u3"]


def test_cancelled_work_is_skipped_and_errors_reach_the_caller(
        lanes: tuple[InferenceExecutor[Resource], Resource]) -> None:
    executor, resource = lanes
    blocker = executor.submit("a", lambda r: r.gate.wait(5))
    skipped = executor.submit("a", lambda r: r.log.append("ran"))
    assert skipped.cancel()
    failing = executor.submit("b", lambda r: 1 / 0)
    resource.gate.set()
    blocker.result(5)
    with pytest.raises(ZeroDivisionError):
        failing.result(5)
    assert executor.submit("c", lambda r: 42).result(5) == 42
    assert resource.log == []


def test_async_run_and_cancellation_from_the_event_loop() -> None:
    executor: InferenceExecutor[Resource] = InferenceExecutor(Resource)
    resource = executor.start()

    async def main() -> None:
        blocker = asyncio.ensure_future(executor.run("a", lambda r: r.gate.wait(5)))
        waiting = asyncio.ensure_future(executor.run("b", lambda r: r.log.append("late")))
        await asyncio.sleep(0.05)
        waiting.cancel()
        await asyncio.sleep(0.05)  # cancellation reaches the thread-side future a few steps later
        resource.gate.set()
        await blocker
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert await executor.run("c", lambda r: "ok") == "ok"

    try:
        asyncio.run(main())
        assert resource.log == []
    finally:
        executor.close(5)


def test_load_failure_is_raised_by_start_and_close_rejects_new_work() -> None:
    def broken() -> Resource:
        raise RuntimeError("no model")

    with pytest.raises(RuntimeError, match="no model"):
        InferenceExecutor(broken).start()
    executor: InferenceExecutor[Resource] = InferenceExecutor(Resource)
    executor.start()
    executor.close(5)
    with pytest.raises(ExecutorClosed):
        executor.submit("a", lambda r: None)


def test_batchable_items_of_different_sessions_of_one_lane_are_served_together() -> None:
    batches: list[list[str]] = []

    def batch(resource: Resource, items: list[str]) -> list[str]:
        batches.append(items)
        return [item.upper() for item in items]

    executor: InferenceExecutor[Resource] = InferenceExecutor(Resource, batch=batch)
    resource = executor.start()
    try:
        blockers = [executor.submit("block", lambda r: r.gate.wait(5), live=live)
                    for live in (True, False)]
        bulk = [executor.submit_item("upload", f"u{i}") for i in range(3)]
        bulk += [executor.submit_item("upload2", "v0")]
        live = [executor.submit_item(f"s{n}", f"s{n}", live=True) for n in range(3)]
        plain = executor.submit("x", lambda r: "plain", live=True)
        resource.gate.set()
        assert [f.result(5) for f in blockers] == [True, True]
        assert [f.result(5) for f in live] == ["S0", "S1", "S2"]
        assert [f.result(5) for f in bulk] == ["U0", "U1", "U2", "V0"]
        assert plain.result(5) == "plain"
        # Each lane batches its own sessions; one item per session per batch (fairness).
        assert sorted(batches) == [["s0", "s1", "s2"], ["u0", "v0"], ["u1"], ["u2"]]
    finally:
        executor.close(5)


@pytest.mark.parametrize("live", [True, False])
def test_a_batch_with_the_wrong_number_of_results_fails_only_its_own_callers(live: bool) -> None:
    calls: list[list[str]] = []

    def batch(resource: Resource, items: list[str]) -> list[str]:
        calls.append(items)
        if len(calls) == 1:
            return [item.upper() for item in items][:-1]  # one result short, once
        return [item.upper() for item in items]

    executor: InferenceExecutor[Resource] = InferenceExecutor(Resource, batch=batch)
    resource = executor.start()
    try:
        blocker = executor.submit("block", lambda r: r.gate.wait(5), live=live)
        first = [executor.submit_item(f"s{n}", f"s{n}", live=live) for n in range(3)]
        resource.gate.set()
        assert blocker.result(5) is True
        for future in first:
            with pytest.raises(RuntimeError, match="2 results for 3"):
                future.result(5)
        # The lane survived: later work of the same and of other sessions is served.
        assert executor.submit_item("s0", "again", live=live).result(5) == "AGAIN"
        assert executor.submit("x", lambda r: "plain", live=live).result(5) == "plain"
        assert calls == [["s0", "s1", "s2"], ["again"]]
    finally:
        executor.close(5)


def test_urgent_work_runs_before_every_partial_and_partials_stay_round_robin(
        lanes: tuple[InferenceExecutor[Resource], Resource]) -> None:
    """Finals first: three sessions' partials are queued, a final submitted last runs next."""
    executor, resource = lanes
    blocker = executor.submit("block", lambda r: r.gate.wait(5), live=True)
    futures = [executor.submit(f"s{n}", lambda r, n=n, i=i: r.log.append(f"p{n}.{i}"), live=True)
               for i in range(2) for n in range(3)]
    futures.append(executor.submit("s3", lambda r: r.log.append("final3"), live=True,
                                   urgent=True))
    resource.gate.set()
    for f in [blocker, *futures]:
        f.result(5)
    assert resource.log == ["final3", "p0.0", "p1.0", "p2.0", "p0.1", "p1.1", "p2.1"]


def test_urgent_work_keeps_its_sessions_order_and_urgent_batches_take_only_urgent_items() -> None:
    batches: list[list[str]] = []

    def batch(resource: Resource, items: list[str]) -> list[str]:
        batches.append(items)
        return items

    executor: InferenceExecutor[Resource] = InferenceExecutor(Resource, batch=batch)
    resource = executor.start()
    try:
        blocker = executor.submit("block", lambda r: r.gate.wait(5), live=True)
        futures = [executor.submit_item(f"s{n}", f"p{n}", live=True) for n in range(3)]
        # s2's final waits behind its own partial, but the session goes first for it; the batch
        # it leads takes only urgent work of other sessions.
        futures += [executor.submit_item("s2", "f2", live=True, urgent=True),
                    executor.submit_item("s4", "f4", live=True, urgent=True)]
        resource.gate.set()
        for f in [blocker, *futures]:
            f.result(5)
        assert batches == [["p2", "f4"], ["f2"], ["p0", "p1"]]
        # Once the urgent work is done, the lane is plain round-robin again.
        assert executor.submit_item("x", "later", live=True).result(5) == "later"
    finally:
        executor.close(5)
