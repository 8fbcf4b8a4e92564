"""Rate-limit tests: bucket maths (M5), client IP extraction (M6 under D8), memory bounds."""

from __future__ import annotations

import pytest

from gigastt.server.ratelimit import (
    RateLimiter,
    TokenBucket,
    client_ip,
    interval_ms,
)

T0 = 1_000_000.0  # a large monotonic reading, as time.monotonic() gives on a long-lived host


@pytest.mark.parametrize(
    ("rpm", "ms"),
    [
        (1, 60000),
        (10, 6000),
        (30, 2000),
        (59, 1016),
        (60, 1000),
        (600, 100),
        (60000, 1),
        (120000, 1),
    ],
)
def test_m5_interval_ms(rpm: int, ms: int) -> None:
    assert interval_ms(rpm) == ms


@pytest.mark.parametrize("rpm", [1, 10, 30, 60, 600, 6000, 60000])
def test_m5_one_interval_refills_exactly_one_token(rpm: int) -> None:
    bucket = TokenBucket(rpm, 1, T0)
    assert bucket.allow(T0)
    assert not bucket.allow(T0)
    step = interval_ms(rpm) / 1000
    assert not bucket.allow(T0 + step * 0.999)
    assert bucket.allow(T0 + step)
    assert not bucket.allow(T0 + step)


def test_bucket_starts_full_and_caps_at_burst() -> None:
    bucket = TokenBucket(60, 3, T0)
    assert [bucket.allow(T0) for _ in range(4)] == [True, True, True, False]
    # A long pause refills to the burst, not beyond.
    assert [bucket.allow(T0 + 3600) for _ in range(4)] == [True, True, True, False]


def test_bucket_refill_is_continuous() -> None:
    bucket = TokenBucket(60, 1, T0)  # one token per second
    assert bucket.allow(T0)
    assert not bucket.allow(T0 + 0.5)
    assert bucket.tokens == pytest.approx(0.5)
    assert bucket.allow(T0 + 1.0)  # the half token from 0.5 s was kept


def test_bucket_clamps() -> None:
    slow = TokenBucket(0, 0, T0)  # rpm -> 1, capacity -> 1
    assert slow.allow(T0)
    assert not slow.allow(T0 + 59)
    assert slow.allow(T0 + 60)
    fast = TokenBucket(10**9, 1, T0)  # rpm -> 60000: one token per ms
    assert fast.allow(T0)
    assert not fast.allow(T0 + 0.0005)
    assert fast.allow(T0 + 0.001)


def test_clock_stepping_back_does_not_drain() -> None:
    bucket = TokenBucket(60, 1, T0)
    assert bucket.allow(T0)
    assert not bucket.allow(T0 - 10)
    assert bucket.allow(T0 + 1)


def test_rl1_sequence() -> None:
    limiter = RateLimiter(30, 1)
    assert limiter.allow("127.0.0.1", T0)
    assert not limiter.allow("127.0.0.1", T0 + 0.01)
    assert limiter.allow("127.0.0.1", T0 + 2.5)


def test_m5_buckets_are_per_key() -> None:
    limiter = RateLimiter(60, 1)
    assert limiter.allow("203.0.113.1", T0)
    assert not limiter.allow("203.0.113.1", T0)
    assert limiter.allow("203.0.113.2", T0)
    assert limiter.allow("2001:db8::1", T0)
    assert not limiter.allow("203.0.113.2", T0)
    assert len(limiter) == 3


def test_m5_evict_idle_drops_only_older_than_cutoff() -> None:
    limiter = RateLimiter(60, 1, idle_secs=300)
    limiter.allow("a", T0)
    limiter.allow("b", T0 + 100)
    limiter.allow("c", T0 + 200)
    limiter.allow("a", T0 + 250)  # seen again: no longer the oldest
    assert limiter.evict_idle(T0 + 400) == 0  # b seen exactly 300 s ago: kept
    assert limiter.evict_idle(T0 + 400.5) == 1
    assert "b" not in limiter and "a" in limiter and "c" in limiter
    assert limiter.evict_idle(T0 + 10_000) == 2
    assert len(limiter) == 0


def test_evicted_key_starts_with_a_full_bucket() -> None:
    limiter = RateLimiter(1, 1, idle_secs=10)
    assert limiter.allow("k", T0)
    assert not limiter.allow("k", T0 + 1)
    limiter.evict_idle(T0 + 100)
    assert limiter.allow("k", T0 + 100)


def test_cap_evicts_least_recently_seen() -> None:
    limiter = RateLimiter(60, 1, max_buckets=100_000)
    for i in range(100_000):
        limiter.allow(f"k{i}", T0 + i * 1e-3)
    assert len(limiter) == 100_000
    limiter.allow("k0", T0 + 100)  # k0 touched again: now the newest
    assert limiter.allow("new", T0 + 101)
    assert len(limiter) == 100_000
    assert "k0" in limiter and "k1" not in limiter and "new" in limiter
    assert limiter.allow("new2", T0 + 102)
    assert "k2" not in limiter and "k3" in limiter


def test_small_cap() -> None:
    limiter = RateLimiter(60, 1, max_buckets=2)
    limiter.allow("a", T0)
    limiter.allow("b", T0 + 1)
    limiter.allow("a", T0 + 2)
    limiter.allow("c", T0 + 3)
    assert ("a" in limiter, "b" in limiter, "c" in limiter) == (True, False, True)


# --------------------------------------------------------------------------- client IP

XFF = [(b"x-forwarded-for", b"203.0.113.42 , 10.0.0.1"), (b"x-real-ip", b"198.51.100.7")]


def test_m6_trusted_loopback_peer_uses_first_xff_hop() -> None:
    assert client_ip("127.0.0.1", XFF, trust_private=False) == "203.0.113.42"
    assert client_ip("127.0.0.1", XFF, trust_private=True) == "203.0.113.42"
    assert client_ip("127.8.9.10", XFF, trust_private=False) == "203.0.113.42"
    assert client_ip("::1", XFF, trust_private=False) == "203.0.113.42"


def test_m6_untrusted_peer_gets_its_own_address() -> None:
    # D8: without --trust-proxy only loopback is trusted, so a LAN client cannot pick a bucket.
    assert client_ip("192.168.1.5", XFF, trust_private=False) == "192.168.1.5"
    assert client_ip("fd00::5", XFF, trust_private=False) == "fd00::5"


def test_m6_public_peer_in_trusted_mode_gets_its_own_address() -> None:
    assert client_ip("198.51.100.7", XFF, trust_private=True) == "198.51.100.7"
    assert client_ip("2001:db8::7", XFF, trust_private=True) == "2001:db8::7"
    for not_rfc1918 in ("172.32.0.1", "169.254.1.1", "100.64.0.1", "fe80::1"):
        assert client_ip(not_rfc1918, XFF, trust_private=True) == not_rfc1918


@pytest.mark.parametrize("peer", ["10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.0.9"])
def test_trust_private_rfc1918(peer: str) -> None:
    assert client_ip(peer, XFF, trust_private=True) == "203.0.113.42"


@pytest.mark.parametrize("peer", ["fc00::1", "fd12:3456::1"])
def test_trust_private_ula(peer: str) -> None:
    assert client_ip(peer, XFF, trust_private=True) == "203.0.113.42"


@pytest.mark.parametrize(
    "garbage",
    [
        b"garbage",
        b"203.0.113.42:8080",
        b"[2001:db8::1]",
        b"fe80::1%eth0",
        b"",
        b" , 203.0.113.42",
        b"unknown, 203.0.113.42",
        b"203.0.113.042",
    ],
)
def test_m6_garbage_xff_falls_back_to_real_ip(garbage: bytes) -> None:
    headers = [(b"x-forwarded-for", garbage), (b"x-real-ip", b" 198.51.100.7 ")]
    assert client_ip("127.0.0.1", headers, trust_private=False) == "198.51.100.7"


def test_garbage_both_falls_back_to_peer() -> None:
    headers = [(b"x-forwarded-for", b"nope"), (b"x-real-ip", b"1.2.3.4:5")]
    assert client_ip("127.0.0.1", headers, trust_private=False) == "127.0.0.1"
    assert client_ip("127.0.0.1", [], trust_private=False) == "127.0.0.1"


def test_first_header_wins_and_non_ascii_is_absent() -> None:
    headers = [(b"x-forwarded-for", b"1.1.1.1"), (b"x-forwarded-for", b"2.2.2.2")]
    assert client_ip("127.0.0.1", headers, trust_private=False) == "1.1.1.1"
    headers = [(b"x-forwarded-for", b"1.1.1.1\xff"), (b"x-real-ip", b"3.3.3.3")]
    assert client_ip("127.0.0.1", headers, trust_private=False) == "3.3.3.3"
    # Header names are matched case-insensitively in case a caller did not lowercase them.
    assert client_ip("127.0.0.1", [(b"X-Real-IP", b"4.4.4.4")], trust_private=False) == "4.4.4.4"


def test_ipv6_normalised() -> None:
    headers = [(b"x-forwarded-for", b"2001:DB8:0:0::1")]
    assert client_ip("::1", headers, trust_private=False) == "2001:db8::1"
    assert client_ip("2001:DB8::0:1", [], trust_private=False) == "2001:db8::1"


def test_ipv4_mapped_peer_judged_and_keyed_as_ipv4() -> None:
    # A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d.
    assert client_ip("::ffff:127.0.0.1", XFF, trust_private=False) == "203.0.113.42"
    assert client_ip("::ffff:10.0.0.2", XFF, trust_private=True) == "203.0.113.42"
    assert client_ip("::ffff:10.0.0.2", XFF, trust_private=False) == "10.0.0.2"
    assert client_ip("::ffff:198.51.100.7", [], trust_private=True) == "198.51.100.7"
    assert client_ip("::1", [(b"x-real-ip", b"::ffff:1.2.3.4")], trust_private=False) == "1.2.3.4"


def test_peer_edge_cases() -> None:
    assert client_ip(None, XFF, trust_private=True) is None
    assert client_ip("not-an-ip", XFF, trust_private=True) is None
    assert client_ip("fe80::1%eth0", [], trust_private=False) == "fe80::1"
