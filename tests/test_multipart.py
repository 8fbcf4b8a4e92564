"""The multipart/form-data parser: differential against the `multipart` package, and one test
per hostile body with its exact error message.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Iterable, Sequence

import multipart as oracle
import pytest

from gigastt.server.multipart import (
    MAX_FIELD_BYTES,
    MAX_PART_HEADER_BYTES,
    MAX_PARTS,
    NEED_DATA,
    Finished,
    FormCollector,
    MultipartError,
    MultipartParser,
    MultipartTooLarge,
    PartData,
    PartEnd,
    PartHeaders,
    boundary_from_content_type,
)

# (name, filename, content type, headers, data) per part.
Part = tuple[str, "str | None", "str | None", tuple[tuple[str, str], ...], bytes]
BIG = 1 << 30
BOUNDARY_CHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? "


# --- drivers ----------------------------------------------------------------------------------


def chunked(body: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = [0, *sorted(set(cuts)), len(body)]
    return [body[a:b] for a, b in itertools.pairwise(points) if b > a]


def random_chunks(body: bytes, rng: random.Random) -> list[bytes]:
    if not body:
        return []
    count = rng.randint(0, min(len(body), 40))
    return chunked(body, rng.sample(range(1, len(body) + 1), count))


def ours(chunks: Sequence[bytes], boundary: bytes, max_body_bytes: int = BIG) -> list[Part]:
    parser = MultipartParser(boundary, max_body_bytes=max_body_bytes)
    parts: list[Part] = []
    current: PartHeaders | None = None
    data = bytearray()
    finished = False
    for chunk in [*chunks, b""]:
        parser.receive_data(chunk)
        while (event := parser.next_event()) is not NEED_DATA:
            assert not finished
            if isinstance(event, PartHeaders):
                assert current is None
                current, data = event, bytearray()
            elif isinstance(event, PartData):
                assert current is not None and len(event.data) > 0
                data += event.data
            elif isinstance(event, PartEnd):
                assert current is not None
                parts.append((current.name, current.filename, current.content_type,
                              current.headers, bytes(data)))
                current = None
            else:
                assert isinstance(event, Finished) and current is None
                finished = True
    assert finished
    return parts


def reference(chunks: Sequence[bytes], boundary: bytes) -> list[Part]:
    parser = oracle.PushMultipartParser(boundary, max_header_count=100, max_header_size=1 << 20)
    parts: list[Part] = []
    data = bytearray()
    for chunk in [*chunks, b""]:
        for event in parser.parse(chunk):
            if isinstance(event, oracle.MultipartSegment):
                segment, data = event, bytearray()
            elif event is None:
                headers = tuple((k.lower(), v) for k, v in segment.headerlist)
                parts.append((segment.name, segment.filename, segment.content_type, headers,
                              bytes(data)))
            else:
                data += event
    return parts


def exact(message: str) -> str:
    return f"^{re.escape(message)}$"


def error_of(chunks: Sequence[bytes], boundary: bytes = b"abc", max_body_bytes: int = BIG) -> str:
    with pytest.raises(MultipartError) as info:
        ours(chunks, boundary, max_body_bytes)
    return str(info.value)


def assert_error(body: bytes, message: str, boundary: bytes = b"abc") -> None:
    """The same precise error whether the body comes whole or byte by byte."""
    assert error_of([body], boundary) == message
    assert error_of([body[i : i + 1] for i in range(len(body))], boundary) == message


def part(name: str = "f", data: bytes = b"v", extra: bytes = b"") -> bytes:
    return (b'Content-Disposition: form-data; name="' + name.encode() + b'"\r\n' + extra
            + b"\r\n" + data)


def form(*parts: bytes, boundary: bytes = b"abc") -> bytes:
    out = b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts)
    return out + b"--" + boundary + b"--\r\n"


# --- generated bodies -------------------------------------------------------------------------

NAME_CHARS = "abcxyzABC019 _-.;=,[]/:яЖ€"


def random_text(rng: random.Random, low: int, high: int) -> str:
    return "".join(rng.choice(NAME_CHARS) for _ in range(rng.randint(low, high)))


def random_boundary(rng: random.Random) -> bytes:
    text = "".join(rng.choice(BOUNDARY_CHARS) for _ in range(rng.randint(1, 70)))
    return (text.rstrip(" ") or "x").encode()


def random_payload(rng: random.Random, boundary: bytes, size: int) -> bytes:
    hazards = [b"\r\n", b"\r", b"\n", b"--", b"\r\n--", b"--" + boundary, b"-",
               b"\r\n--" + boundary[: rng.randint(0, len(boundary) - 1)]]
    out = bytearray()
    while len(out) < size:
        if rng.random() < 0.3:
            out += rng.choice(hazards)
        else:
            out += rng.randbytes(rng.randint(1, 16))
    payload = bytes(out)
    # A delimiter inside the data is not allowed in a valid body (RFC 2046 §5.1.1).
    delimiter = b"\r\n--" + boundary
    while (b"\r\n" + payload + delimiter).find(delimiter) != len(payload) + 2:
        payload = payload.replace(b"--" + boundary, b"-+" + boundary)
        payload = payload.replace(b"--" + boundary[:1], b"-" + boundary[:1])
    return payload


def random_form(rng: random.Random, max_payload: int) -> tuple[bytes, bytes, list[Part]]:
    boundary = random_boundary(rng)
    expected: list[Part] = []
    body = b""
    if rng.random() < 0.3:
        preamble = random_payload(rng, boundary, rng.randint(0, 40))
        while b"--" in preamble:  # the oracle takes "--boundary" anywhere in it as a boundary
            preamble = preamble.replace(b"--", b"-")
        body += preamble + b"\r\n"
    for _ in range(rng.randint(1, 6)):
        name = random_text(rng, 1, 12)
        filename = random_text(rng, 0, 12) if rng.random() < 0.5 else None
        content_type = rng.choice([None, "audio/wav", "Audio/MPEG", "text/plain; charset=utf-8",
                                   "application/octet-stream"])
        headers = [("content-disposition", f'form-data; name="{name}"'
                    + (f'; filename="{filename}"' if filename is not None else ""))]
        if content_type is not None:
            headers.append(("content-type", content_type))
        if rng.random() < 0.3:
            headers.append(("x-extra", random_text(rng, 1, 20).strip(" ") or "x"))
        rng.shuffle(headers)
        data = random_payload(rng, boundary, rng.randint(0, max_payload))
        cased = [(rng.choice([k, k.upper(), k.title()]), v) for k, v in headers]
        body += b"--" + boundary + b"\r\n"
        body += b"".join(f"{k}: {v}\r\n".encode() for k, v in cased) + b"\r\n" + data + b"\r\n"
        media = content_type.partition(";")[0].lower() if content_type else None
        expected.append((name, filename, media, tuple(headers), data))
    body += b"--" + boundary + b"--"
    if rng.random() < 0.5:
        body += b"\r\n" + (rng.randbytes(rng.randint(0, 30)) if rng.random() < 0.5 else b"")
    return boundary, body, expected


def test_small_body_split_at_every_byte_position() -> None:
    boundary = b"b0-und'ary"
    payload = (b"\r\n--b0-und\r\n--\r\n-\r\r\n\n\r\n\r\nb0-und'ary--b0-und'ary\r\n"
               + bytes(range(256)) + b"\r\n--b")
    body = (b"preamble --b0-und'ar\r\n--b0-und'ary\r\n"
            b'Content-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
            b"--b0-und'ary\r\n"
            b'content-disposition: form-data; name="file"; filename="\xd1\x8f; a.wav"\r\n'
            b"Content-Type: audio/wav\r\n\r\n" + payload + b"\r\n"
            b"--b0-und'ary\r\nContent-Disposition: form-data; name=\"empty\"\r\n\r\n\r\n"
            b"--b0-und'ary--\r\nepilogue\r\n--b0-und'ary\r\n")
    expected: list[Part] = [
        ("model", None, None, (("content-disposition", 'form-data; name="model"'),),
         b"whisper-1"),
        ("file", "я; a.wav", "audio/wav",
         (("content-disposition", 'form-data; name="file"; filename="я; a.wav"'),
          ("content-type", "audio/wav")), payload),
        ("empty", None, None, (("content-disposition", 'form-data; name="empty"'),), b""),
    ]
    assert ours([body], boundary) == expected == reference([body], boundary)
    for cut in range(1, len(body)):
        chunks = [body[:cut], body[cut:]]
        assert ours(chunks, boundary) == expected == reference(chunks, boundary), cut
    single_bytes = [body[i : i + 1] for i in range(len(body))]
    assert ours(single_bytes, boundary) == expected == reference(single_bytes, boundary)


@pytest.mark.parametrize("seed", range(60))
def test_random_bodies_match_the_oracle(seed: int) -> None:
    rng = random.Random(seed)
    boundary, body, expected = random_form(rng, max_payload=rng.choice([50, 500, 5000]))
    for _ in range(6):
        chunks = random_chunks(body, rng)
        assert ours(chunks, boundary) == expected == reference(chunks, boundary)


def test_file_data_is_a_view_of_the_input_not_a_copy() -> None:
    body = form(part("file", b"RIFF" * 1000))
    parser = MultipartParser(b"abc", max_body_bytes=BIG)
    parser.receive_data(body)
    views = []
    while (event := parser.next_event()) is not NEED_DATA:
        if isinstance(event, PartData):
            views.append(event.data)
    assert [v.obj is body for v in views] == [True]
    assert parser.buffered == 0


# --- boundary_from_content_type -----------------------------------------------------------------


@pytest.mark.parametrize(("value", "boundary"), [
    ("multipart/form-data; boundary=abc", b"abc"),
    (b"multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW",
     b"----WebKitFormBoundary7MA4YWxkTrZu0gW"),
    ('Multipart/Form-Data ;  BOUNDARY="a b:c?=(d)"', b"a b:c?=(d)"),
    ('multipart/form-data; charset=utf-8; boundary="x\\yz"', b"xyz"),
    ("multipart/form-data;\tboundary=" + "a" * 70, b"a" * 70),
])
def test_boundary_from_content_type(value: str | bytes, boundary: bytes) -> None:
    assert boundary_from_content_type(value) == boundary


@pytest.mark.parametrize(("value", "message"), [
    ("multipart/form-data", "missing boundary parameter"),
    ("multipart/form-data; charset=utf-8", "missing boundary parameter"),
    ("multipart/form-data; boundary=" + "a" * 71, "boundary longer than 70 characters"),
    ('multipart/form-data; boundary=""', "empty boundary"),
    ("multipart/form-data; boundary=", "malformed Content-Type parameters"),
    ('multipart/form-data; boundary="abc', "unterminated quoted string in Content-Type"),
    ('multipart/form-data; boundary="a@b"', "boundary contains a character that is not allowed"),
    ("multipart/form-data; boundary=a!b", "boundary contains a character that is not allowed"),
    ('multipart/form-data; boundary="ab "', "boundary ends with a space"),
    ("multipart/form-data; boundary=a; boundary=b", "duplicate boundary parameter"),
    ("multipart/form-data; boundary=a b", "malformed Content-Type parameters"),
    ("multipart/mixed; boundary=abc", "Content-Type is not multipart/form-data"),
    ("application/x-www-form-urlencoded", "Content-Type is not multipart/form-data"),
    ("", "Content-Type is not multipart/form-data"),
])
def test_bad_content_type(value: str, message: str) -> None:
    with pytest.raises(MultipartError, match=exact(message)):
        boundary_from_content_type(value)


# --- accepted shapes ----------------------------------------------------------------------------


def test_preamble_and_epilogue_are_ignored() -> None:
    body = b"preamble --abc\r\n--ab\r\n" + form(part("a", b"1")) + b"epilogue\r\n--abc\r\nxx"
    assert ours([body], b"abc") == [("a", None, None, (("content-disposition",
                                                          'form-data; name="a"'),), b"1")]


def test_transport_padding_after_boundaries_is_allowed() -> None:
    body = (b"--abc \t \r\n" + part("a", b"1") + b"\r\n--abc\t\r\n" + part("b", b"2")
            + b"\r\n--abc--  \r\n")
    assert [(p[0], p[4]) for p in ours([body], b"abc")] == [("a", b"1"), ("b", b"2")]
    single_bytes = [body[i : i + 1] for i in range(len(body))]
    assert [(p[0], p[4]) for p in ours(single_bytes, b"abc")] == [("a", b"1"), ("b", b"2")]


def test_closing_boundary_may_end_the_body_without_crlf() -> None:
    assert ours([b"--abc\r\n" + part() + b"\r\n--abc--"], b"abc")[0][4] == b"v"


@pytest.mark.parametrize("data", [
    b"x--abc\r\n",  # boundary text without CRLF before it
    b"--ab\r\n--abcd",  # ...or as the prefix of a longer line
    b"\r\n--ab\r\n",  # a boundary prefix on its own line
    b"\r\n--abcX\r\n",  # the boundary as the prefix of a longer line
    b"\r\n--abc-x",
    b"abc\r\n-\r\n--\r\n---abc",
])
def test_boundary_text_inside_data_is_data(data: bytes) -> None:
    body = form(part("file", data))
    assert ours([body], b"abc")[0][4] == data
    assert ours([body[i : i + 1] for i in range(len(body))], b"abc")[0][4] == data


def test_disposition_parameters() -> None:
    body = form(
        part("x", extra=b""),
        b'content-disposition: FORM-DATA ; NAME = "a\\"b\\\\c" ;filename="C:\\\\f.wav"\r\n\r\n',
        b"Content-Disposition: form-data; name=tok.en; filename*=UTF-8''%D1%8F.wav\r\n\r\n",
        b'Content-Disposition: form-data; filename*=x; name=""; filename="\xd1\x8f.wav"\r\n\r\n',
        b"Content-Disposition: form-data; name=t\r\nContent-Type: AUDIO/Wav ; rate=16000\r\n\r\n",
    )
    parts = ours([body], b"abc")
    assert [(p[0], p[1], p[2]) for p in parts] == [
        ("x", None, None), ('a"b\\c', "C:\\f.wav", None), ("tok.en", None, None),
        ("", "я.wav", None), ("t", None, "audio/wav"),
    ]


def test_exactly_the_limits_are_accepted() -> None:
    line = b'Content-Disposition: form-data; name="f"\r\n'
    pad = MAX_PART_HEADER_BYTES - len(line) - len(b"X: \r\n") - 2
    headers = line + b"X: " + b"p" * pad + b"\r\n\r\n"
    assert len(headers) == MAX_PART_HEADER_BYTES
    body = b"--abc\r\n" + headers + b"v\r\n--abc--"
    assert ours([body], b"abc")[0][4] == b"v"
    assert len(ours([form(*[part(str(i)) for i in range(MAX_PARTS)])], b"abc")) == MAX_PARTS
    assert ours([body], b"abc", max_body_bytes=len(body))[0][4] == b"v"


# --- hostile bodies ----------------------------------------------------------------------------


def test_empty_body() -> None:
    assert error_of([]) == "empty body"


def test_missing_boundary() -> None:
    assert_error(b'Content-Disposition: form-data; name="f"\r\n\r\nv\r\n',
                 "boundary not found in body")
    assert_error(form(part(), boundary=b"xyz"), "boundary not found in body")


def test_unterminated_body() -> None:
    assert_error(b"--abc\r\n" + part(data=b"value"), "body ended before the closing boundary")
    assert_error(b"--abc\r\n" + part(data=b"value\r\n--abc"),
                 "body ended before the closing boundary")
    assert_error(b"--abc\r\nContent-Disposition: form-data; name=f\r\n",
                 "body ended before the closing boundary")
    assert_error(b"--abc", "body ended before the closing boundary")
    assert_error(b"--abc  ", "body ended before the closing boundary")


def test_closing_boundary_before_any_part() -> None:
    assert_error(b"--abc--\r\n", "closing boundary before any part")


def test_bytes_after_the_closing_boundary() -> None:
    assert_error(form(part())[:-2] + b" x", "unexpected bytes after the closing boundary")


def test_boundary_longer_than_70_characters() -> None:
    with pytest.raises(MultipartError, match=exact("boundary longer than 70 characters")):
        boundary_from_content_type("multipart/form-data; boundary=" + "-" * 71)


def test_part_header_flood_of_lines() -> None:
    headers = b'Content-Disposition: form-data; name="f"\r\n' + b"X-A: aaaaaaaaaa\r\n" * 1000
    assert_error(b"--abc\r\n" + headers + b"\r\nv\r\n--abc--", "part headers exceed 16 KiB")


def test_part_header_one_byte_over_the_limit() -> None:
    line = b'Content-Disposition: form-data; name="f"\r\n'
    pad = MAX_PART_HEADER_BYTES - len(line) - len(b"X: \r\n") - 2 + 1
    assert_error(b"--abc\r\n" + line + b"X: " + b"p" * pad + b"\r\n\r\nv\r\n--abc--",
                 "part headers exceed 16 KiB")


def test_endless_header_line_fails_early_with_bounded_buffer() -> None:
    parser = MultipartParser(b"abc", max_body_bytes=BIG)
    parser.receive_data(b"--abc\r\nContent-Disposition: form-data; name=f\r\nX-Flood: ")
    fed = 0
    with pytest.raises(MultipartError, match=exact("part headers exceed 16 KiB")):
        while fed < 10 * MAX_PART_HEADER_BYTES:
            assert parser.next_event() is NEED_DATA
            assert parser.buffered <= MAX_PART_HEADER_BYTES
            parser.receive_data(b"a" * 1000)
            fed += 1000
    assert fed <= MAX_PART_HEADER_BYTES + 1000


def test_ten_thousand_tiny_parts_fail_at_part_33() -> None:
    one = b"--abc\r\n" + part("f", b"x") + b"\r\n"
    body = one * 10_000 + b"--abc--\r\n"
    parser = MultipartParser(b"abc", max_body_bytes=BIG)
    headers = 0
    fed = 0
    with pytest.raises(MultipartError, match=f"^more than {MAX_PARTS} parts$"):
        while True:
            parser.receive_data(body[fed : fed + 64])
            fed += 64
            while (event := parser.next_event()) is not NEED_DATA:
                headers += isinstance(event, PartHeaders)
    assert headers == MAX_PARTS
    assert fed <= (MAX_PARTS + 1) * len(one) + 64
    assert error_of([body]) == "more than 32 parts"


def test_missing_content_disposition() -> None:
    assert_error(form(b"Content-Type: text/plain\r\n\r\nv"), "missing Content-Disposition")
    assert_error(form(b"\r\nv"), "missing Content-Disposition")


def test_duplicate_content_disposition() -> None:
    assert_error(form(part(extra=b'Content-Disposition: form-data; name="g"\r\n')),
                 "duplicate Content-Disposition")


def test_disposition_not_form_data() -> None:
    assert_error(form(b'Content-Disposition: attachment; name="f"\r\n\r\nv'),
                 "Content-Disposition is not form-data")
    assert_error(form(b"Content-Disposition: \r\n\r\nv"), "Content-Disposition is not form-data")


def test_missing_name_parameter() -> None:
    assert_error(form(b'Content-Disposition: form-data; filename="a.wav"\r\n\r\nv'),
                 "missing name parameter")
    assert_error(form(b"Content-Disposition: form-data\r\n\r\nv"), "missing name parameter")


def test_duplicate_name_and_filename_parameters() -> None:
    assert_error(form(b"Content-Disposition: form-data; name=a; name=b\r\n\r\nv"),
                 "duplicate name parameter")
    assert_error(form(b"Content-Disposition: form-data; name=a; filename=x; filename=y\r\n\r\nv"),
                 "duplicate filename parameter")


def test_malformed_disposition_parameters() -> None:
    for value in [b"form-data; name", b"form-data; name=a b", b"form-data; name=a;",
                  b"form-data; =a", b'form-data; name="a"x', b"form-data; name=a,b"]:
        assert_error(form(b"Content-Disposition: " + value + b"\r\n\r\nv"),
                     "malformed Content-Disposition parameters")
    assert_error(form(b'Content-Disposition: form-data; name="a\r\n\r\nv'),
                 "unterminated quoted string in Content-Disposition")


def test_bare_lf_line_ends() -> None:
    lf_body = b'--abc\nContent-Disposition: form-data; name="f"\n\nv\n--abc--\n'
    assert_error(lf_body, "bare LF in boundary line")
    assert_error(b'--abc\r\nContent-Disposition: form-data; name="f"\n\nv\r\n--abc--\r\n',
                 "bare LF in part headers")
    assert_error(b'--abc\r\nContent-Disposition: form-data; name="f"\r\n\nv\r\n--abc--\r\n',
                 "bare LF in part headers")
    assert_error(b"--abc\r\n" + part() + b"\r\n--abc\n", "bare LF in boundary line")
    assert_error(b"--abc\r\n" + part() + b"\r\n--abc  \n", "bare LF in boundary line")


def test_bare_cr_line_ends() -> None:
    assert_error(b'--abc\r\nContent-Disposition: form-data; name="f"\r\rX: y\r\n\r\nv\r\n--abc--',
                 "bare CR in part headers")
    assert_error(b"--abc\r\n" + part() + b"\r\n--abc\rx", "bare CR in boundary line")
    assert_error(b"--abc\r\n" + part() + b"\r\n--abc--\r", "bare CR in boundary line")


def test_malformed_boundary_line() -> None:
    assert_error(b"--abc \tx\r\n" + part() + b"\r\n--abc--", "malformed boundary line")


def test_headers_without_colon() -> None:
    assert_error(form(part(extra=b"X-No-Colon\r\n")), "part header line without colon")


def test_folded_header_lines() -> None:
    assert_error(form(b'Content-Disposition: form-data;\r\n name="f"\r\n\r\nv'),
                 "folded part header lines are not allowed")


@pytest.mark.parametrize(("extra", "message"), [
    (b"Bad Name: x\r\n", "invalid part header name"),
    (b": x\r\n", "invalid part header name"),
    (b"X-\xd1\x8f: x\r\n", "invalid part header name"),
    (b"X: a\x00b\r\n", "control character in part header"),
    (b"X: a\x7fb\r\n", "control character in part header"),
    (b"X: \xff\xfe\r\n", "part header is not valid UTF-8"),
    (b"Content-Type: a/b\r\nContent-Type: a/b\r\n", "duplicate Content-Type"),
    (b"Content-Type: wav\r\n", "malformed part Content-Type"),
])
def test_bad_part_headers(extra: bytes, message: str) -> None:
    assert_error(form(part(extra=extra)), message)


def test_body_over_the_limit() -> None:
    body = form(part("file", b"x" * 1000))
    with pytest.raises(MultipartTooLarge, match=f"^body exceeds {len(body) - 1} bytes$"):
        ours([body], b"abc", max_body_bytes=len(body) - 1)
    chunks = [body[i : i + 10] for i in range(0, len(body), 10)]
    assert error_of(chunks, max_body_bytes=500) == "body exceeds 500 bytes"


def test_errors_are_final() -> None:
    parser = MultipartParser(b"abc", max_body_bytes=BIG)
    parser.receive_data(b"--abc\r\nbroken\r\n\r\n")
    with pytest.raises(MultipartError, match=exact("part header line without colon")):
        parser.next_event()
    for call in (parser.next_event, lambda: parser.receive_data(b"more")):
        with pytest.raises(MultipartError, match=exact("part header line without colon")):
            call()


def test_data_after_the_end_of_input_is_a_programming_error() -> None:
    parser = MultipartParser(b"abc", max_body_bytes=BIG)
    parser.receive_data(b"")
    with pytest.raises(RuntimeError):
        parser.receive_data(b"x")


# --- FormCollector ------------------------------------------------------------------------------


def openai_form(audio: bytes) -> bytes:
    return form(
        part("model", b"whisper-1"),
        part("timestamp_granularities[]", b"word"),
        b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\n" + audio,
        part("timestamp_granularities[]", b"segment"),
        part("prompt", "привет".encode()),
        part("language", b""),
    )


def test_form_collector_keeps_fields_and_the_file() -> None:
    audio = bytes(range(256)) * 400 + b"\r\n--abc"[:-1]
    body = openai_form(audio)
    collector = FormCollector(b"abc", max_body_bytes=len(body))
    for i in range(0, len(body), 1000):
        collector.feed(body[i : i + 1000])
    collector.feed(b"")
    assert collector.finished
    assert collector.file is not None and collector.file.filename == "a.wav"
    assert collector.file.content_type == "audio/wav"
    assert bytes(collector.file_data) == audio
    assert collector.fields == {"model": ["whisper-1"], "prompt": ["привет"], "language": [""],
                                "timestamp_granularities[]": ["word", "segment"]}
    assert collector.field("model") == "whisper-1"
    assert collector.field("response_format") is None


def test_form_collector_streams_the_file_to_a_callback() -> None:
    audio = b"\x00\x01" * 100_000
    body = openai_form(audio)
    chunks: list[memoryview] = []
    collector = FormCollector(b"abc", max_body_bytes=BIG, on_file_data=chunks.append)
    collector.feed(body)
    collector.feed(b"")
    assert collector.file_data == b""
    assert b"".join(chunks) == audio
    assert all(c.obj is body for c in chunks)


def test_form_collector_field_limit() -> None:
    ok = form(part("prompt", b"x" * MAX_FIELD_BYTES))
    collector = FormCollector(b"abc", max_body_bytes=BIG)
    collector.feed(ok)
    collector.feed(b"")
    assert collector.field("prompt") == "x" * MAX_FIELD_BYTES
    body = form(part("prompt", b"x" * (MAX_FIELD_BYTES + 1)))
    with pytest.raises(MultipartError, match=exact("form field exceeds 64 KiB")):
        FormCollector(b"abc", max_body_bytes=BIG).feed(body)


def test_form_collector_file_is_bounded_by_the_body_limit() -> None:
    body = openai_form(b"x" * 200_000)
    collector = FormCollector(b"abc", max_body_bytes=100_000)
    with pytest.raises(MultipartTooLarge, match=exact("body exceeds 100000 bytes")):
        for i in range(0, len(body), 4096):
            collector.feed(body[i : i + 4096])
    assert len(collector.file_data) < 100_000


@pytest.mark.parametrize(("body", "message"), [
    (form(part("file", b"a"), part("file", b"b")), "more than one file part"),
    (form(part("model", b"\xff")), "form field is not valid UTF-8"),
])
def test_form_collector_rejects(body: bytes, message: str) -> None:
    with pytest.raises(MultipartError, match=exact(message)):
        FormCollector(b"abc", max_body_bytes=BIG).feed(body)
