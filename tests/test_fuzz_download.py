"""Fuzzing the download's parsers: ``Content-Range``, ``Content-Length`` and ``Range`` values, and
the SHA-256 list reader: a result or the documented refusal, never another exception.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gigastt.store.download import SHA256_PINS, DownloadError, read_sha256_file
from gigastt.store.download.wire import (
    MAX_NUMBER,
    ContentRange,
    parse_content_length,
    parse_content_range,
    range_header,
)

numbers = st.integers(0, MAX_NUMBER)
ows = st.sampled_from(["", " ", "\t", "  \t"])
# Digits of other scripts and superscripts: str.isdigit() and \d accept some, int() some.
foreign_digits = st.characters(categories=("Nd", "No")).filter(lambda c: not c.isascii())


@st.composite
def content_ranges(draw: st.DrawFn) -> ContentRange:
    total = draw(st.none() | st.integers(1, MAX_NUMBER))
    last = MAX_NUMBER if total is None else total - 1
    end = draw(st.integers(0, last))
    start = draw(st.integers(0, end))
    return ContentRange(start, end, total)


@given(st.text() | st.from_regex(r"bytes [0-9*+\- ]{0,12}-[0-9²]{0,12}/[0-9*]{0,25}"))
def test_content_range_parser_never_raises(value: str) -> None:
    got = parse_content_range(value)
    if got is not None:
        assert 0 <= got.start <= got.end <= MAX_NUMBER
        assert got.total is None or got.end < got.total <= MAX_NUMBER
        assert value.strip(" \t").isascii()


@given(content_ranges(), ows, ows, st.sampled_from(["bytes", "BYTES", "Bytes"]))
def test_content_range_round_trips(expected: ContentRange, before: str, after: str,
                                   unit: str) -> None:
    text = str(expected)
    assert re.fullmatch(r"bytes [0-9]+-[0-9]+/([0-9]+|\*)", text)
    assert parse_content_range(before + text + after) == expected
    assert parse_content_range(unit + text.removeprefix("bytes")) == expected


@given(content_ranges(), st.data())
def test_content_range_rejects_foreign_digits_signs_and_spaces(expected: ContentRange,
                                                               data: st.DataObject) -> None:
    text = str(expected)
    digits = [i for i, c in enumerate(text) if c.isdigit()]
    i = data.draw(st.sampled_from(digits))
    assert parse_content_range(text[:i] + data.draw(foreign_digits) + text[i + 1:]) is None
    starts = [m.start() for m in re.finditer(r"(?<![0-9])[0-9]", text)]
    j = data.draw(st.sampled_from(starts))
    assert parse_content_range(text[:j] + data.draw(st.sampled_from("+-")) + text[j:]) is None
    inner = [k for k in digits if k + 1 < len(text) and text[k + 1].isdigit()]
    if inner:
        k = data.draw(st.sampled_from(inner)) + 1
        assert parse_content_range(text[:k] + data.draw(st.sampled_from([" ", "\t", "_"]))
                                   + text[k:]) is None
    assert parse_content_range(text.replace(" ", "  ", 1)) is None
    assert parse_content_range(text.replace("bytes", "byteſ")) is None  # matches bytes, ignorecase


@given(st.integers(MAX_NUMBER + 1, 10**40), st.integers(0, 2))
def test_content_range_rejects_numbers_beyond_2_63(big: int, where: int) -> None:
    parts = ["0", "0", "1"]
    parts[where] = str(big)
    assert parse_content_range(f"bytes {parts[0]}-{parts[1]}/{parts[2]}") is None
    assert parse_content_length(str(big)) is None


@given(st.text() | st.from_regex(r"[ \t]?[+\-]?[0-9²³¹٣_ ]{0,25}[ \t]?"))
def test_content_length_parser_never_raises(value: str) -> None:
    got = parse_content_length(value)
    if got is not None:
        assert 0 <= got <= MAX_NUMBER
        assert value.strip(" \t") == str(got).zfill(len(value.strip(" \t")))


@given(numbers, ows, ows, st.data())
def test_content_length_round_trips_and_rejects_foreign_digits(n: int, before: str, after: str,
                                                               data: st.DataObject) -> None:
    assert parse_content_length(before + str(n) + after) == n
    text = str(n)
    i = data.draw(st.integers(0, len(text) - 1))
    assert parse_content_length(text[:i] + data.draw(foreign_digits) + text[i + 1:]) is None
    assert parse_content_length(data.draw(st.sampled_from("+-")) + text) is None


@given(numbers)
def test_range_header_is_in_the_grammar(offset: int) -> None:
    value = range_header(offset)
    match = re.fullmatch(r"bytes=([0-9]+)-", value)
    assert match is not None and int(match.group(1)) == offset
    if offset < MAX_NUMBER:  # the 206 a server answers it with is accepted
        assert parse_content_range(f"bytes {offset}-{offset}/{offset + 1}") == ContentRange(
            offset, offset, offset + 1)


# --- the SHA-256 list ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sums(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sums") / "SHA256SUMS"


@given(st.binary() | st.text().map(str.encode))
def test_sha256_reader_refuses_or_reads(sums: Path, content: bytes) -> None:
    sums.write_bytes(content)
    try:
        pins = read_sha256_file(sums)
    except DownloadError:
        return
    assert set(pins) <= set(SHA256_PINS)
    assert all(re.fullmatch("[0-9a-f]{64}", digest) for digest in pins.values())


hex_digests = st.text("0123456789abcdefABCDEF", min_size=64, max_size=64)


@given(st.dictionaries(st.sampled_from(sorted(SHA256_PINS)), hex_digests),
       st.lists(st.sampled_from(["", "# comment", "   ", f"{'0' * 64}  other.bin"])),
       st.sampled_from(["  ", " *"]), st.sampled_from(["", "./", "/srv/mirror/"]),
       st.sampled_from(["\n", "\r\n"]), st.randoms(use_true_random=False))
def test_sha256_list_round_trips(sums: Path, expected: dict[str, str], noise: list[str],
                                 mode: str, prefix: str, newline: str,
                                 rng: random.Random) -> None:
    lines = [f"{digest}{mode}{prefix}{name}" for name, digest in expected.items()] + noise
    rng.shuffle(lines)
    sums.write_text(newline.join(lines), newline="")
    assert read_sha256_file(sums) == {name: d.lower() for name, d in expected.items()}
