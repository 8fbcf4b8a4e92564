"""Header numbers a mirror sends (``Content-Length``, ``Content-Range``) and the ``Range`` we send.
ASCII digits only, below 2**63: anything else (``10²``, ``+5``, ``1_0``) is a broken mirror.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_NUMBER = 2**63 - 1
# [0-9], not \d or str.isdigit(): both accept other scripts' digits, and isdigit() also
# superscripts, which int() then rejects. 19 digits bound the work int() does.
_NUMBER = "[0-9]{1,19}"
_LENGTH = re.compile(_NUMBER)
# RFC 9110 §14.4: range-unit SP first-pos "-" last-pos "/" ( complete-length / "*" ); the
# unit is case-insensitive (ASCII only: re.IGNORECASE alone would let "byteſ" match).
_CONTENT_RANGE = re.compile(rf"bytes ({_NUMBER})-({_NUMBER})/({_NUMBER}|\*)",
                            re.ASCII | re.IGNORECASE)
_OWS = " \t"


@dataclass(frozen=True, slots=True)
class ContentRange:
    """``bytes <start>-<end>/<total>`` of a 206 answer; ``end`` is inclusive, ``total`` None for
    ``*`` (length unknown)."""

    start: int
    end: int
    total: int | None

    def __str__(self) -> str:
        return f"bytes {self.start}-{self.end}/{'*' if self.total is None else self.total}"


def _number(text: str) -> int | None:
    if _LENGTH.fullmatch(text) is None:
        return None
    value = int(text)
    return value if value <= MAX_NUMBER else None


def parse_content_length(value: str) -> int | None:
    """The byte count of a ``Content-Length`` value, or None when it is not one."""
    return _number(value.strip(_OWS))


def parse_content_range(value: str) -> ContentRange | None:
    """A satisfied ``Content-Range`` (``bytes 0-99/1000``, ``bytes 0-99/*``), or None: malformed,
    ``bytes */1000`` (the 416 form), or an impossible range (end before start, end past total)."""
    match = _CONTENT_RANGE.fullmatch(value.strip(_OWS))
    if match is None:
        return None
    start, end = _number(match.group(1)), _number(match.group(2))
    total = None if match.group(3) == "*" else _number(match.group(3))
    if start is None or end is None or (total is None and match.group(3) != "*"):
        return None
    if end < start or (total is not None and end >= total):
        return None
    return ContentRange(start, end, total)


def range_header(offset: int) -> str:
    """The ``Range`` value asking for everything from byte ``offset`` on."""
    return f"bytes={offset}-"
