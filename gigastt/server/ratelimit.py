"""Per-client-IP token buckets and the client IP a request is charged to.

Sans-I/O: callers pass a monotonic ``now`` in seconds (D8 in docs/decisions.md).
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import TypeAlias

__all__ = [
    "MAX_RPM",
    "RateLimiter",
    "TokenBucket",
    "client_ip",
    "interval_ms",
    "retry_after_secs",
]

MAX_RPM = 60_000

# now - last is a float difference of two large monotonic readings; without slack, waiting
# exactly one interval could leave 0.9999999999 tokens and reject.
_EPSILON = 1e-9


def _clamp_rpm(rpm: int) -> int:
    return min(max(rpm, 1), MAX_RPM)


def interval_ms(rpm: int) -> int:
    """Milliseconds per token at ``rpm`` (after the 60000 cap), at least 1."""
    return max(60_000 // min(rpm, MAX_RPM), 1)


def retry_after_secs(tokens: float, per_sec: float) -> int:
    """Whole seconds until a bucket holding ``tokens`` and refilling ``per_sec`` tokens a second
    admits a request again: rounded up, at least 1 (D22 in docs/decisions.md, the 429's
    ``Retry-After``). Waiting that long always suffices, and one second less never does."""
    # The same slack as the admission test, so that float noise in 1/per_sec (1/0.1 is
    # 10.000000000000002) does not add a second the bucket does not need.
    missing = 1.0 - _EPSILON - tokens
    if missing <= 0.0:
        return 1
    return max(math.ceil(missing / per_sec), 1)


class TokenBucket:
    """Continuous refill of rpm/60000 tokens per ms up to ``max(burst, 1)``; starts full."""

    __slots__ = ("_capacity", "_last", "_per_sec", "_tokens")

    def __init__(self, rpm: int, burst: int, now: float) -> None:
        self._per_sec = _clamp_rpm(rpm) / 60.0
        self._capacity = float(max(burst, 1))
        self._tokens = self._capacity
        self._last = now

    @property
    def tokens(self) -> float:
        """Tokens as of the last ``allow`` call."""
        return self._tokens

    def _refill(self, now: float) -> None:
        elapsed = max(now - self._last, 0.0)  # never refill negatively if the clock steps back
        self._last = max(now, self._last)
        self._tokens = min(self._capacity, self._tokens + elapsed * self._per_sec)

    def allow(self, now: float) -> bool:
        self._refill(now)
        if self._tokens >= 1.0 - _EPSILON:
            self._tokens = max(self._tokens - 1.0, 0.0)
            return True
        return False

    def retry_after(self, now: float) -> int:
        """Whole seconds from ``now`` until ``allow`` would succeed (at least 1)."""
        self._refill(now)
        return retry_after_secs(self._tokens, self._per_sec)


class RateLimiter:
    """One bucket per key, at most ``max_buckets`` of them, least recently seen evicted first.

    The OrderedDict is kept in last-seen order (moved to the end on each hit), so both the
    full-table eviction and the idle sweep pop from the front: O(1) per bucket.
    ``now`` must not go backwards between calls.
    """

    def __init__(
        self,
        rpm: int,
        burst: int,
        *,
        max_buckets: int = 100_000,
        idle_secs: float = 300.0,
    ) -> None:
        if max_buckets < 1:
            raise ValueError("max_buckets must be at least 1")
        self._rpm = _clamp_rpm(rpm)
        self._burst = max(burst, 1)
        self._max = max_buckets
        self._idle = idle_secs
        self._buckets: OrderedDict[str, tuple[TokenBucket, float]] = OrderedDict()

    @property
    def rpm(self) -> int:
        """The effective (clamped) rate."""
        return self._rpm

    @property
    def burst(self) -> int:
        return self._burst

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: object) -> bool:
        return key in self._buckets

    def allow(self, key: str, now: float) -> bool:
        """Charge one token to ``key``; False means 429."""
        entry = self._buckets.get(key)
        if entry is None:
            if len(self._buckets) >= self._max:
                self._buckets.popitem(last=False)
            bucket = TokenBucket(self._rpm, self._burst, now)
        else:
            bucket = entry[0]
            self._buckets.move_to_end(key)
        self._buckets[key] = (bucket, now)
        return bucket.allow(now)

    def retry_after(self, key: str, now: float) -> int:
        """The ``Retry-After`` seconds for ``key`` after ``allow`` refused it (D22)."""
        entry = self._buckets.get(key)
        return 1 if entry is None else entry[0].retry_after(now)

    def evict_idle(self, now: float) -> int:
        """Drop buckets not seen for more than ``idle_secs``; returns how many were dropped."""
        cutoff = now - self._idle
        dropped = 0
        while self._buckets:
            key, (_, seen) = next(iter(self._buckets.items()))
            if seen >= cutoff:
                break
            del self._buckets[key]
            dropped += 1
        return dropped


# --------------------------------------------------------------------------- client IP

_IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

_RFC1918 = (
    ipaddress.IPv4Network("10.0.0.0/8"),
    ipaddress.IPv4Network("172.16.0.0/12"),
    ipaddress.IPv4Network("192.168.0.0/16"),
)
_ULA = ipaddress.IPv6Network("fc00::/7")


def _parse_ip(text: str) -> _IPAddress | None:
    """A bare IP literal, or None: no port, no brackets, no ``%zone`` (which ipaddress allows)."""
    if "%" in text:
        return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    # Judge and key an IPv4-mapped address by its IPv4 form: on a dual-stack listener every
    # IPv4 client (and a same-host proxy at 127.0.0.1) arrives as ::ffff:a.b.c.d, and one client
    # must not get two buckets depending on which socket family carried it.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _is_trusted(ip: _IPAddress, trust_private: bool) -> bool:
    if ip.is_loopback:
        return True
    if not trust_private:
        return False
    if isinstance(ip, ipaddress.IPv4Address):
        return any(ip in net for net in _RFC1918)
    return ip in _ULA


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The first header called ``name``, or None if absent or not visible ASCII."""
    for key, value in headers:
        if key.lower() == name:
            if all(b == 0x09 or 0x20 <= b <= 0x7E for b in value):
                return value.decode("ascii")
            return None
    return None


def client_ip(
    peer: str | None,
    headers: Sequence[tuple[bytes, bytes]],
    *,
    trust_private: bool,
) -> str | None:
    """The address a request is charged to, normalised; None if it cannot be determined.

    Forwarding headers count only when the TCP peer is a trusted proxy (D8): loopback always,
    RFC 1918 / IPv6 ULA with ``trust_private`` (``--trust-proxy``). Then the first
    ``x-forwarded-for`` element wins if it is an IP, else ``x-real-ip``, else the peer.
    """
    # A link-local peer carries its interface (fe80::1%eth0); the zone does not name a client.
    peer_ip = _parse_ip(peer.strip().split("%", 1)[0]) if peer is not None else None
    if peer_ip is None or not _is_trusted(peer_ip, trust_private):
        return str(peer_ip) if peer_ip is not None else None
    forwarded = _header(headers, b"x-forwarded-for")
    if forwarded is not None:
        ip = _parse_ip(forwarded.split(",", 1)[0].strip())
        if ip is not None:
            return str(ip)
    real = _header(headers, b"x-real-ip")
    if real is not None:
        ip = _parse_ip(real.strip())
        if ip is not None:
            return str(ip)
    return str(peer_ip)
