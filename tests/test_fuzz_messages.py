"""Fuzzing the parsers that read client-controlled text: WebSocket control messages and the
forwarding headers a request is charged to. Each returns a value or None, never raises."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from gigastt.protocol import Configure, Stop, parse_control
from gigastt.server.ratelimit import client_ip

# --------------------------------------------------------------------------- control messages

# Every code point, lone surrogates (category Cs) included.
ANY_CHAR = st.characters(blacklist_categories=())
SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)

json_scalars = (st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False)
                | st.integers(min_value=-(10**60), max_value=10**60) | st.text(ANY_CHAR))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(ANY_CHAR), inner,
                                                                max_size=4),
    max_leaves=30,
)
FIELDS = st.sampled_from(["type", "sample_rate", "diarization", "protocol_version", "endpoint_mode",
                          "min_silence_ms", "commit_policy", "vad", "hotwords", "x"])
TYPES = st.sampled_from(["stop", "configure", "Stop", "", "start"]) | json_values


def _parsed(text: str) -> Stop | Configure | None:
    result = parse_control(text)
    assert result is None or isinstance(result, Stop | Configure)
    return result


@given(st.text(ANY_CHAR))
@example("{")
@example('{"type":"stop"')
@example('{"type":"stop"}\x00')
def test_random_text(text: str) -> None:
    _parsed(text)


@given(json_values)
def test_random_json_values(value: Any) -> None:
    _parsed(json.dumps(value))
    _parsed(json.dumps(value, ensure_ascii=False))


@given(st.lists(st.tuples(FIELDS, TYPES), max_size=6))
def test_random_message_shaped_objects(pairs: list[tuple[str, Any]]) -> None:
    # Built by hand so that keys may repeat, as they may on the wire.
    text = "{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in pairs) + "}"
    result = _parsed(text)
    if isinstance(result, Configure):
        rate = result.sample_rate
        assert rate is None or (type(rate) is int and 0 <= rate < 2**32)
        assert result.diarization in (None, True, False)
        assert result.protocol_version is None or isinstance(result.protocol_version, str)
        assert result.vad in (None, True, False)
        assert result.hotwords is None or isinstance(result.hotwords, tuple)
        # Validation of values never raises: a code or None.
        assert result.invalid_field() is None or isinstance(result.invalid_field(), str)


@given(st.integers(min_value=1, max_value=200_000), st.sampled_from(["[", '{"":', "[{\"a\":"]),
       st.booleans())
@example(400, "[", True)
@example(100_000, "[", False)
def test_deep_nesting(depth: int, opener: str, closed: bool) -> None:
    closer = {"[": "]", '{"":': "}", '[{"a":': "}]"}[opener]
    leaf = "[]" if opener == "[" else "1"
    body = opener * depth + leaf + (closer * depth if closed else "")
    result = _parsed('{"type":"configure","x":' + body + "}")
    if depth >= 127:  # deeper than serde_json's limit: ignored like any invalid message
        assert result is None


@given(st.integers(min_value=-(10**4000), max_value=10**4000)
       | st.sampled_from(["1e99999", "-1e99999", "1e-99999", "-0", "1" * 5000, "0.0" + "0" * 5000,
                          "4294967295", "4294967296", "18446744073709551616"]))
def test_huge_numbers(number: int | str) -> None:
    text = str(number)
    result = _parsed('{"type":"configure","sample_rate":' + text + "}")
    if result is not None:
        assert isinstance(result, Configure)
        assert result.sample_rate == int(text) and 0 <= int(text) < 2**32


@given(st.text(ANY_CHAR), st.text(SURROGATE, min_size=1), st.text(ANY_CHAR), st.booleans())
def test_lone_surrogates_are_rejected(before: str, lone: str, after: str, as_key: bool) -> None:
    # json.dumps writes surrogates as \udXXX escapes; json.loads joins a high one followed by a
    # low one into one character and leaves any other alone (lone), which serde_json refuses.
    odd = json.dumps(before + lone + after)
    pair = f"{odd}:1" if as_key else f'"x":[{{"y":{odd}}}]'
    result = _parsed('{"type":"stop",' + pair + "}")
    lone_left = any("\ud800" <= ch <= "\udfff" for ch in json.loads(odd))
    assert result == (None if lone_left else Stop())


# --------------------------------------------------------------------------- forwarding headers

HEADER_NAMES = st.sampled_from([b"x-forwarded-for", b"X-Forwarded-For", b"x-real-ip",
                                b"X-REAL-IP", b"forwarded", b"host"])
IP_TEXT = st.ip_addresses().map(str)
IPISH = st.text(st.sampled_from("0123456789abcdefABCDEF.:,%[] \t/-fe80ff"), max_size=60)
HEADER_VALUES = (st.binary(max_size=80) | IPISH.map(str.encode) | IP_TEXT.map(str.encode)
                 | st.lists(IP_TEXT | IPISH, max_size=4).map(lambda xs: ", ".join(xs).encode()))
PEERS = (IP_TEXT | st.sampled_from(["127.0.0.1", "::1", "::ffff:127.0.0.1", "10.1.2.3",
                                     "fe80::1%eth0", " 192.168.0.9 "]) | st.text(max_size=40)
         | st.none())


def _normal(text: str) -> str | None:
    try:
        ip = ipaddress.ip_address(text.strip().split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


@given(PEERS, st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=5), st.booleans())
@example("127.0.0.1", [(b"x-forwarded-for", b"fe80::1%eth0, 1.2.3.4")], False)
@example("127.0.0.1", [(b"x-forwarded-for", b"\xff\xfe"), (b"x-real-ip", b"::ffff:8.8.8.8")],
         False)
def test_client_ip_from_random_headers(peer: str | None, headers: list[tuple[bytes, bytes]],
                                       trust_private: bool) -> None:
    key = client_ip(peer, headers, trust_private=trust_private)
    peer_key = _normal(peer) if peer is not None else None
    if peer_key is None:
        assert key is None
        return
    assert key is not None
    assert _normal(key) == key  # a canonical IP literal: one client, one bucket
    trusted = ipaddress.ip_address(peer_key)
    is_proxy = trusted.is_loopback or (trust_private and (
        trusted in ipaddress.ip_network("fc00::/7") if trusted.version == 6 else any(
            trusted in ipaddress.ip_network(net)
            for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))))
    if not is_proxy:
        assert key == peer_key  # headers from an untrusted peer never count
