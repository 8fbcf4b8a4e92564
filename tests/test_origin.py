"""Origin policy tests: the rules of docs/api.md "Origin policy (CORS)" and their edge cases."""

from __future__ import annotations

import pytest

from gigastt.server.origin import EXEMPT_PATHS, OriginDecision, OriginPolicy, is_loopback_origin


def cors(value: bytes) -> tuple[tuple[bytes, bytes], ...]:
    return (
        (b"access-control-allow-origin", value),
        (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
        (b"access-control-allow-headers", b"*"),
        (b"vary", b"origin"),
    )


@pytest.mark.parametrize(
    "origin",
    [
        "http://localhost",
        "https://localhost:3000",
        "http://127.0.0.1:9876",
        "HTTPS://127.0.0.1",
        "http://[::1]:9876",
        "https://[::1]",
        "http://localhost/",
        "http://LOCALHOST:anything",
    ],
)
def test_loopback_origins(origin: str) -> None:
    assert is_loopback_origin(origin)


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example.com",
        "http://192.168.1.10",
        "http://localhost.evil.example.com",
        "http://127.0.0.2",
        "http://127.0.0.10",
        "ws://localhost",
        "http://[::1].evil",
        "http://localhost@evil.example.com",
        "localhost",
        "",
    ],
)
def test_not_loopback_origins(origin: str) -> None:
    assert not is_loopback_origin(origin)


def test_m2_default_policy() -> None:
    policy = OriginPolicy()
    assert policy.decide("https://evil.example.com") == OriginDecision(allowed=False)
    assert policy.decide("http://localhost.evil.example.com").allowed is False
    allowed = policy.decide("http://localhost:3000")
    assert allowed.allowed
    assert allowed.headers == cors(b"http://localhost:3000")
    assert policy.decide(None) == OriginDecision(allowed=True, headers=())


def test_m2_health_and_ready_are_exempt() -> None:
    assert frozenset({"/health", "/ready"}) == EXEMPT_PATHS
    assert "/v1/models" not in EXEMPT_PATHS
    assert "/health/" not in EXEMPT_PATHS


def test_echo_is_exactly_as_received() -> None:
    assert OriginPolicy().decide("HTTP://LocalHost:3000").headers == cors(b"HTTP://LocalHost:3000")


def test_m3_allowlist_exact_case_insensitive() -> None:
    policy = OriginPolicy(["https://app.example.com"])
    assert policy.decide("https://app.example.com").headers == cors(b"https://app.example.com")
    assert policy.decide("HTTPS://APP.EXAMPLE.COM").headers == cors(b"HTTPS://APP.EXAMPLE.COM")
    for near_miss in (
        "https://app.example.com.evil.com",
        "https://app.example.com/",
        "https://app.example.com:443",
        "http://app.example.com",
        "https://app.example.co",
    ):
        assert not policy.decide(near_miss).allowed, near_miss
    # Loopback stays allowed alongside an allowlist.
    assert policy.decide("http://127.0.0.1:8080").allowed


def test_allowlist_folds_ascii_only() -> None:
    # KELVIN SIGN lowercases to "k" in Unicode; it must not let https://k.example in.
    policy = OriginPolicy(["https://\u212a.example"])
    assert not policy.decide("https://k.example").allowed


@pytest.mark.parametrize("null", ["null", "NULL", "Null"])
def test_null_origin_is_refused_unless_listed(null: str) -> None:
    # D21: sandboxed iframes and data: pages of any site send "null".
    assert not OriginPolicy().decide(null).allowed
    assert not OriginPolicy(["https://app.example.com"]).decide(null).allowed
    assert OriginPolicy(["null"]).decide(null).headers == cors(null.encode())
    assert OriginPolicy(allow_any=True).decide(null).headers == cors(b"*")


def test_m3_allow_any() -> None:
    policy = OriginPolicy(allow_any=True)
    for origin in ("https://evil.example.com", "http://localhost:3000", "x"):
        decision = policy.decide(origin)
        assert decision.allowed
        assert decision.headers == cors(b"*")
    assert policy.decide(None).headers == ()


@pytest.mark.parametrize(
    "origin", ["https://évil.example.com", "http://localhost\x00", "http://local\x7fhost"]
)
def test_non_visible_ascii_is_absent(origin: str) -> None:
    assert OriginPolicy().decide(origin) == OriginDecision(allowed=True, headers=())


def test_bytes_are_accepted() -> None:
    policy = OriginPolicy()
    assert policy.decide(b"http://localhost:3000").headers == cors(b"http://localhost:3000")
    assert not policy.decide(b"https://evil.example.com").allowed
    assert policy.decide("https://\xe9vil.example.com".encode("latin-1")).headers == ()


def test_empty_origin_is_denied() -> None:
    # An empty value is still a present, visible-ASCII Origin that matches nothing.
    assert not OriginPolicy().decide("").allowed
