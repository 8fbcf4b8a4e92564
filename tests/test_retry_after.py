"""D22: a 429's ``Retry-After`` is the wait until the client's bucket holds a token again.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gigastt.server.ratelimit import RateLimiter, TokenBucket, retry_after_secs
from tests.serverproc import ServerProcess

T0 = 1_000_000.0  # a large monotonic reading, as on a long-lived host

# --- the computation, with a clock passed in -----------------------------------------------------


@pytest.mark.parametrize(("tokens", "per_sec", "secs"), [
    (0.0, 0.1, 10),         # 6 rpm: 1/0.1 is 10.000000000000002 in floats, still 10
    (0.0, 0.5, 2),          # 30 rpm
    (0.0, 40 / 60, 2),      # 40 rpm: 1.5 s, rounded up
    (0.0, 1 / 60, 60),      # 1 rpm
    (0.0, 1000.0, 1),       # 60000 rpm: a millisecond, at least one second
    (0.25, 0.1, 8),         # 7.5 s
    (0.9, 0.1, 1),
    (0.999999, 0.1, 1),
    (1.0, 0.1, 1),          # a full bucket would admit: never 0
    (3.0, 0.1, 1),
])
def test_retry_after_secs(tokens: float, per_sec: float, secs: int) -> None:
    assert retry_after_secs(tokens, per_sec) == secs


@pytest.mark.parametrize("rpm", [1, 6, 7, 30, 40, 59, 61, 600, 6000, 60000, 120000])
@pytest.mark.parametrize("burst", [1, 3])
@pytest.mark.parametrize("waited", [0.0, 0.001, 0.37, 1.0, 2.5])
def test_waiting_retry_after_suffices_and_a_second_less_does_not(
        rpm: int, burst: int, waited: float) -> None:
    per_token = 60 / min(rpm, 60000)
    bucket = TokenBucket(rpm, burst, T0)
    while bucket.allow(T0):
        pass
    now = T0 + min(waited, per_token * 0.99)  # still refused
    assert not bucket.allow(now)
    secs = bucket.retry_after(now)
    assert secs == max(1, math.ceil(per_token - (now - T0) - 1e-9))
    probe = TokenBucket(rpm, burst, T0)
    while probe.allow(T0):
        pass
    assert not probe.allow(now)
    if secs > 1:
        assert not probe.allow(now + secs - 1)
    assert probe.allow(now + secs)


def test_retry_after_does_not_spend_or_change_the_bucket() -> None:
    bucket = TokenBucket(6, 1, T0)
    assert bucket.allow(T0)
    assert [bucket.retry_after(T0 + 4.0) for _ in range(3)] == [6, 6, 6]
    assert not bucket.allow(T0 + 9.9)
    assert bucket.allow(T0 + 10.0)


def test_limiter_retry_after_is_per_key() -> None:
    limiter = RateLimiter(6, 2)
    assert limiter.allow("a", T0) and limiter.allow("a", T0) and not limiter.allow("a", T0)
    assert limiter.retry_after("a", T0) == 10
    assert limiter.retry_after("a", T0 + 2.5) == 8
    assert limiter.allow("b", T0 + 2.5)
    assert limiter.retry_after("b", T0 + 2.5) == 1  # b holds a token: no wait
    assert limiter.retry_after("never-seen", T0) == 1


# --- a real server -------------------------------------------------------------------------------

RPM = 40  # one token every 1.5 s: the header must round up, and is neither 60 nor 1.5
PER_TOKEN = 60 / RPM


@pytest.fixture(scope="module")
def limited(small_model: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(small_model, "--rate-limit-per-minute", str(RPM),
                         "--rate-limit-burst", "1")
    yield proc
    assert proc.stop() == 0


def expected_range(elapsed: float) -> range:
    """Possible headers when the bucket was emptied up to ``elapsed`` seconds before the 429."""
    return range(max(1, math.ceil(PER_TOKEN - elapsed)), math.ceil(PER_TOKEN) + 1)


def test_rest_429_retry_after_is_the_refill_time(limited: ServerProcess) -> None:
    headers = {"X-Forwarded-For": "198.51.100.21"}
    started = time.monotonic()
    assert limited.request("GET", "/v1/models", headers=headers).status == 200
    reply = limited.request("GET", "/v1/models", headers=headers)
    elapsed = time.monotonic() - started
    assert reply.status == 429
    retry = int(reply.headers["retry-after"])
    assert retry in expected_range(elapsed)
    # The native REST body is unchanged (docs/api.md, Errors).
    assert reply.body == b'{"code":"rate_limited","error":"Too many requests"}'
    # Waiting that long is enough.
    time.sleep(retry)
    assert limited.request("GET", "/v1/models", headers=headers).status == 200


def test_ws_429_carries_the_same_wait_in_ms(limited: ServerProcess) -> None:
    url = f"ws://{limited.host}:{limited.port}/v1/ws"
    headers = {"X-Forwarded-For": "198.51.100.22"}

    async def main() -> tuple[int, dict[str, object], float]:
        started = time.monotonic()
        async with connect(url, additional_headers=headers) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "ready"
            with pytest.raises(InvalidStatus) as info:
                await connect(url, additional_headers=headers)
        elapsed = time.monotonic() - started
        response = info.value.response
        assert response.status_code == 429
        return int(response.headers["Retry-After"]), json.loads(response.body), elapsed

    retry, body, elapsed = asyncio.run(main())
    assert retry in expected_range(elapsed)
    assert body == {"code": "rate_limited", "error": "Too many requests",
                    "retry_after_ms": retry * 1000}
