"""Fuzzing the multipart/form-data parser: random and mutated bodies in random chunkings give
events or MultipartError, the same outcome for every chunking, and a bounded buffer.
"""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from gigastt.server.multipart import (
    MAX_PART_HEADER_BYTES,
    NEED_DATA,
    Finished,
    FormCollector,
    MultipartError,
    MultipartParser,
    PartData,
    PartEnd,
    PartHeaders,
)

BIG = 1 << 30
BCHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? "
TEXT = "ab01 _-.;=,\"\\%яЖ\t"
HAZARDS = [b"\r\n", b"\r", b"\n", b"--", b"-", b" ", b"\t", b":", b";", b'"', b"\\", b"\x00",
           b"\xff", b"--abc", b"\r\n--abc", b"\r\n--abc--", b"\r\n--ab", b"\r\n\r\n",
           b'Content-Disposition: form-data; name="f"', b'; filename="a.wav"',
           b"Content-Type: audio/wav", b"X" * 5000]

Outcome = tuple[str, object]


def chunked(body: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted({c for c in cuts if 0 < c < len(body)}), len(body)]
    return [body[a:b] for a, b in itertools.pairwise(points)]


def outcome(chunks: list[bytes], boundary: bytes) -> Outcome:
    """The parts read, or the error message; asserts the buffer bound after every chunk."""
    bound = MAX_PART_HEADER_BYTES + len(boundary) + 8
    parser = MultipartParser(boundary, max_body_bytes=BIG)
    parts: list[tuple[str, str | None, str | None, bytes]] = []
    data = bytearray()
    finished = False
    try:
        for chunk in [*chunks, b""]:
            parser.receive_data(chunk)
            while (event := parser.next_event()) is not NEED_DATA:
                if isinstance(event, PartHeaders):
                    current, data = event, bytearray()
                elif isinstance(event, PartData):
                    data += event.data
                elif isinstance(event, PartEnd):
                    parts.append((current.name, current.filename, current.content_type,
                                  bytes(data)))
                else:
                    assert isinstance(event, Finished)
                    finished = True
            assert parser.buffered <= bound
    except MultipartError as exc:
        return "error", str(exc)
    assert finished
    return "ok", parts


def quote(text: str) -> bytes:
    return ('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"').encode()


@st.composite
def valid_forms(draw: st.DrawFn) -> tuple[bytes, bytes, Outcome]:
    boundary = (draw(st.text(BCHARS, min_size=1, max_size=70)).rstrip(" ") or "b").encode()
    delimiter = b"\r\n--" + boundary

    def clean(data: bytes) -> bytes:
        # A delimiter inside data or preamble would end it (RFC 2046 §5.1.1).
        while (b"\r\n" + data + delimiter).find(delimiter) != len(data) + 2:
            data = data.replace(b"--" + boundary[:1], b"-")
        return data

    payloads = st.binary(max_size=300) | st.lists(st.sampled_from(HAZARDS[:-1]), max_size=20).map(
        b"".join)
    body = b""
    if draw(st.booleans()):
        body += clean(draw(payloads)) + b"\r\n"
    parts = []
    for _ in range(draw(st.integers(1, 4))):
        name = draw(st.text(TEXT, max_size=10))
        filename = draw(st.none() | st.text(TEXT, max_size=10))
        content_type = draw(st.sampled_from([None, "audio/wav", "Text/Plain; charset=utf-8"]))
        data = clean(draw(payloads))
        body += b"--" + boundary + draw(st.sampled_from([b"", b" ", b"\t "])) + b"\r\n"
        body += b"Content-Disposition: form-data; name=" + quote(name)
        if filename is not None:
            body += b"; filename=" + quote(filename)
        if content_type is not None:
            body += b"\r\ncontent-type: " + content_type.encode()
        body += b"\r\n\r\n" + data + b"\r\n"
        media = content_type.partition(";")[0].lower() if content_type else None
        parts.append((name, filename, media, data))
    body += b"--" + boundary + b"--" + draw(st.sampled_from([b"", b"\r\n", b"\r\nepilogue"]))
    return boundary, body, ("ok", parts)


@st.composite
def mutations(draw: st.DrawFn, body: bytes) -> bytes:
    out = bytearray(body)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(out)))
        end = min(len(out), at + draw(st.integers(0, 40)))
        op = draw(st.sampled_from(["delete", "insert", "replace", "repeat", "truncate"]))
        if op == "delete":
            del out[at:end]
        elif op == "insert":
            out[at:at] = draw(st.sampled_from(HAZARDS) | st.binary(min_size=1, max_size=8))
        elif op == "replace":
            out[at:end] = draw(st.sampled_from(HAZARDS) | st.binary(max_size=8))
        elif op == "repeat":
            out[at:at] = out[at:end] * draw(st.integers(1, 500))
        else:
            del out[at:]
    return bytes(out)


cut_lists = st.lists(st.integers(0, 100_000), max_size=30)


@given(valid_forms(), cut_lists)
def test_valid_bodies_parse_the_same_in_any_chunking(form: tuple[bytes, bytes, Outcome],
                                                      cuts: list[int]) -> None:
    boundary, body, expected = form
    assert outcome([body], boundary) == expected
    assert outcome(chunked(body, [c % len(body) for c in cuts]), boundary) == expected


@given(st.data())
def test_mutated_bodies_give_events_or_a_multipart_error(data: st.DataObject) -> None:
    boundary, body, _ = data.draw(valid_forms())
    mutated = data.draw(mutations(body))
    whole = outcome([mutated], boundary)
    cuts = data.draw(cut_lists)
    assert outcome(chunked(mutated, [c % (len(mutated) + 1) for c in cuts]), boundary) == whole
    if len(mutated) < 2000:
        assert outcome([mutated[i : i + 1] for i in range(len(mutated))], boundary) == whole


@given(st.lists(st.sampled_from(HAZARDS) | st.binary(max_size=20), max_size=40).map(b"".join),
       cut_lists)
def test_random_bytes_give_events_or_a_multipart_error(body: bytes, cuts: list[int]) -> None:
    whole = outcome([body], b"abc")
    assert outcome(chunked(body, [c % (len(body) + 1) for c in cuts]), b"abc") == whole


@given(st.data())
def test_form_collector_only_raises_multipart_error(data: st.DataObject) -> None:
    boundary, body, _ = data.draw(valid_forms())
    mutated = data.draw(mutations(body))
    collector = FormCollector(boundary, max_body_bytes=BIG, file_field="")
    try:
        for chunk in chunked(mutated, data.draw(cut_lists)):
            collector.feed(chunk)
        collector.feed(b"")
    except MultipartError:
        return
    assert collector.finished
