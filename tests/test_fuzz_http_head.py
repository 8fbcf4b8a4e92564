"""Fuzzing the request-head checks of the HTTP driver against a real server: control characters in
header values, Transfer-Encoding with Content-Length, and which ``X-Request-Id`` is echoed."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.serverproc import ServerProcess, parse_response, raw_exchange

# Header values never hold CR or LF (those end the line); every other byte may appear.
ANY_VALUE = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=220).map(
    str.encode)
VALUES = ANY_VALUE | PRINTABLE | st.sampled_from([b"", b" a\tb ", b"\x7f", b"\x80\xff", b"a" * 201])
NAMES = st.sampled_from([b"X-A", b"User-Agent", b"X-Request-Id", b"x-request-id"])
# Refused: C0 controls other than HTAB, and DEL (NUL, VT and FF already by h11's grammar).
CONTROL = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]")
UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def server(small_model: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(small_model, "--skip-quantize")
    yield proc
    proc.stop()


def _expected_id(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The id a client may choose (docs/api.md): the last ``X-Request-Id``, 1–200 visible ASCII."""
    ids = [value.strip(b" \t") for name, value in headers if name.lower() == b"x-request-id"]
    if ids and re.fullmatch(rb"[\x21-\x7e]{1,200}", ids[-1]):
        return ids[-1].decode("ascii")
    return None


@given(headers=st.lists(st.tuples(NAMES, VALUES), max_size=6),
       framing=st.sampled_from(["", "cl", "te", "cl+te"]))
@example(headers=[(b"X-A", b"a\x01b")], framing="")
@example(headers=[(b"X-A", b"a\tb\x80")], framing="")
@example(headers=[(b"X-Request-Id", b"first"), (b"x-request-id", b"second")], framing="")
@example(headers=[], framing="cl+te")
def test_head_checks(server: ServerProcess, headers: list[tuple[bytes, bytes]],
                     framing: str) -> None:
    lines = [b"GET /health HTTP/1.1", b"Host: x", *(name + b": " + v for name, v in headers)]
    if "cl" in framing:
        lines.append(b"Content-Length: 0")
    if "te" in framing:
        lines.append(b"Transfer-Encoding: chunked")
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    body = b"0\r\n\r\n" if framing == "te" else b""
    with server.connect() as sock:
        status, got, _ = parse_response(raw_exchange(sock, head + body))
    refused = framing == "cl+te" or any(CONTROL.search(value) for _, value in headers)
    assert status == (400 if refused else 200)
    chosen = _expected_id(headers)
    if refused or chosen is None:
        assert UUID7.match(got["x-request-id"])
    else:
        assert got["x-request-id"] == chosen
