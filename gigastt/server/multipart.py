"""Strict, bounded multipart/form-data parsing (RFC 7578 on RFC 2046) for file uploads.

Sans-I/O like h11: bytes go in through ``receive_data``, events come out of ``next_event``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = [
    "MAX_BOUNDARY_CHARS",
    "MAX_FIELD_BYTES",
    "MAX_PARTS",
    "MAX_PART_HEADER_BYTES",
    "NEED_DATA",
    "Event",
    "Finished",
    "FormCollector",
    "MultipartError",
    "MultipartParser",
    "MultipartTooLarge",
    "NeedData",
    "PartData",
    "PartEnd",
    "PartHeaders",
    "boundary_from_content_type",
]

MAX_BOUNDARY_CHARS: Final = 70  # RFC 2046 §5.1.1
MAX_PART_HEADER_BYTES: Final = 16 * 1024  # one part's header section, CRLFs included
MAX_PARTS: Final = 32
MAX_FIELD_BYTES: Final = 64 * 1024  # a non-file field's value (FormCollector)

_BCHARS: Final = frozenset(
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? "
)
_TOKEN: Final = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN_RE: Final = re.compile(_TOKEN)
_PARAM_NAME_RE: Final = re.compile(rf"({_TOKEN})[ \t]*=[ \t]*")
_MEDIA_TYPE_RE: Final = re.compile(rf"{_TOKEN}/{_TOKEN}")
_HEADER_NAME_RE: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL_RE: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_CR, _LF, _DASH = 0x0D, 0x0A, 0x2D
_LWSP: Final = b" \t"


class MultipartError(Exception):
    """A malformed or over-limit body; ``str(error)`` is a fixed message safe to show clients."""


class MultipartTooLarge(MultipartError):
    """The body is longer than the parser's ``max_body_bytes`` (a 413 rather than a 400)."""


class NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA


@dataclass(frozen=True, slots=True)
class PartHeaders:
    """A part begins. ``headers`` holds (lower-cased name, value) in arrival order."""

    name: str
    filename: str | None
    content_type: str | None  # the lower-cased media type without parameters
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class PartData:
    """Some bytes of the current part: a view of the input, valid as long as the caller keeps it."""

    data: memoryview


@dataclass(frozen=True, slots=True)
class PartEnd:
    """The current part is complete."""


@dataclass(frozen=True, slots=True)
class Finished:
    """The closing boundary was read; anything after it is epilogue and is ignored."""


Event = PartHeaders | PartData | PartEnd | Finished


def _skip_ows(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    return pos


def _quoted_string(text: str, pos: int, what: str) -> tuple[str, int]:
    """The unescaped content of the quoted-string at ``text[pos] == '"'``, and the end index."""
    out: list[str] = []
    pos += 1
    while pos < len(text):
        ch = text[pos]
        if ch == '"':
            return "".join(out), pos + 1
        if ch == "\\":
            pos += 1
            if pos == len(text):
                break
            ch = text[pos]
        out.append(ch)
        pos += 1
    raise MultipartError(f"unterminated quoted string in {what}")


def _split_parameters(value: str, what: str) -> tuple[str, list[tuple[str, str]]]:
    """``value`` as its leading item and its ``; name=value`` parameters (names lower-cased)."""
    head, sep, rest = value.partition(";")
    params: list[tuple[str, str]] = []
    pos = 0
    while sep:
        match = _PARAM_NAME_RE.match(rest, _skip_ows(rest, pos))
        if match is None:
            raise MultipartError(f"malformed {what} parameters")
        pos = match.end()
        if rest.startswith('"', pos):
            param, pos = _quoted_string(rest, pos, what)
        else:
            token = _TOKEN_RE.match(rest, pos)
            if token is None:
                raise MultipartError(f"malformed {what} parameters")
            param, pos = token.group(), token.end()
        params.append((match.group(1).lower(), param))
        pos = _skip_ows(rest, pos)
        if pos == len(rest):
            break
        if rest[pos] != ";":
            raise MultipartError(f"malformed {what} parameters")
        pos += 1
    return head.strip(" \t"), params


def boundary_from_content_type(value: str | bytes) -> bytes:
    """The boundary of a ``multipart/form-data`` Content-Type header value, validated."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    media_type, params = _split_parameters(text, "Content-Type")
    if media_type.lower() != "multipart/form-data":
        raise MultipartError("Content-Type is not multipart/form-data")
    boundaries = [v for k, v in params if k == "boundary"]
    if not boundaries:
        raise MultipartError("missing boundary parameter")
    if len(boundaries) > 1:
        raise MultipartError("duplicate boundary parameter")
    boundary = boundaries[0]
    if not boundary:
        raise MultipartError("empty boundary")
    if len(boundary) > MAX_BOUNDARY_CHARS:
        raise MultipartError("boundary longer than 70 characters")
    if not all(ord(ch) in _BCHARS for ch in boundary):
        raise MultipartError("boundary contains a character that is not allowed")
    if boundary.endswith(" "):
        raise MultipartError("boundary ends with a space")
    return boundary.encode("ascii")


def _disposition(value: str) -> tuple[str, str | None]:
    """The ``name`` and ``filename`` of a form-data Content-Disposition value."""
    kind, params = _split_parameters(value, "Content-Disposition")
    if kind.lower() != "form-data":
        raise MultipartError("Content-Disposition is not form-data")
    found: dict[str, str] = {}
    for key, param in params:
        # RFC 7578 §4.2 forbids senders the RFC 5987 `filename*` form, so it is ignored.
        if key in ("name", "filename"):
            if key in found:
                raise MultipartError(f"duplicate {key} parameter")
            found[key] = param
    if "name" not in found:
        raise MultipartError("missing name parameter")
    return found["name"], found.get("filename")


def _part_headers(headers: list[tuple[str, str]]) -> PartHeaders:
    dispositions = [v for k, v in headers if k == "content-disposition"]
    if not dispositions:
        raise MultipartError("missing Content-Disposition")
    if len(dispositions) > 1:
        raise MultipartError("duplicate Content-Disposition")
    name, filename = _disposition(dispositions[0])
    types = [v for k, v in headers if k == "content-type"]
    if len(types) > 1:
        raise MultipartError("duplicate Content-Type")
    content_type = None
    if types:
        content_type = types[0].partition(";")[0].strip(" \t")
        if not _MEDIA_TYPE_RE.fullmatch(content_type):
            raise MultipartError("malformed part Content-Type")
        content_type = content_type.lower()
    return PartHeaders(name, filename, content_type, tuple(headers))


def _header_line(line: bytes) -> tuple[str, str]:
    if line[0] in _LWSP:
        raise MultipartError("folded part header lines are not allowed")
    name, colon, value = line.partition(b":")
    if not colon:
        raise MultipartError("part header line without colon")
    if not _HEADER_NAME_RE.fullmatch(name):
        raise MultipartError("invalid part header name")
    value = value.strip(_LWSP)
    if _CONTROL_RE.search(value):
        raise MultipartError("control character in part header")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise MultipartError("part header is not valid UTF-8") from None
    return name.decode("ascii").lower(), text


class _State(enum.Enum):
    START = enum.auto()  # the body may open with the first boundary, no CRLF before it
    PREAMBLE = enum.auto()
    BOUNDARY_PADDING = enum.auto()  # LWSP after a boundary, before its CRLF
    HEADERS = enum.auto()
    BODY = enum.auto()
    CLOSE_PADDING = enum.auto()  # LWSP after the closing boundary, before CRLF or the end
    DONE = enum.auto()


class _Delimiter(enum.Enum):
    OPEN = enum.auto()  # CRLF--boundary CRLF
    PADDED = enum.auto()  # CRLF--boundary LWSP
    CLOSE = enum.auto()  # CRLF--boundary--
    UNDECIDED = enum.auto()  # no delimiter yet; bytes from the index on may begin one


class MultipartParser:
    """The multipart/form-data body state machine: ``receive_data`` in, ``next_event`` out.

    Call ``next_event`` until it returns ``NEED_DATA`` before feeding more; ``b""`` marks the
    end of input. A file part's bytes come out as views of the input as they arrive; the parser
    keeps only a possible boundary split across chunks or an unfinished header section.
    Any ``MultipartError`` is final: every later call raises it again.
    """

    def __init__(self, boundary: bytes, *, max_body_bytes: int) -> None:
        if not 1 <= len(boundary) <= MAX_BOUNDARY_CHARS:
            raise ValueError("boundary must be 1-70 bytes; use boundary_from_content_type")
        self._delimiter = b"\r\n--" + boundary
        self._max_body_bytes = max_body_bytes
        self._received = 0
        self._eof = False
        self._error: MultipartError | None = None
        self._state = _State.START
        self._data = b""
        self._view = memoryview(self._data)
        self._pos = 0
        self._parts = 0
        self._header_bytes = 0
        self._headers: list[tuple[str, str]] = []

    @property
    def buffered(self) -> int:
        """Input bytes held back after ``NEED_DATA`` (a split boundary or header section)."""
        return len(self._data) - self._pos

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if self._error is not None:
            raise self._error
        if self._eof:
            raise RuntimeError("receive_data() after the end of input")
        if not data:
            self._eof = True
            return
        if self._state is _State.DONE:
            return
        self._received += len(data)
        if self._received > self._max_body_bytes:
            self._error = MultipartTooLarge(f"body exceeds {self._max_body_bytes} bytes")
            raise self._error
        if self._pos < len(self._data):
            self._data = self._data[self._pos :] + data
        else:
            self._data = data if isinstance(data, bytes) else bytes(data)
        self._view = memoryview(self._data)
        self._pos = 0

    def next_event(self) -> Event | NeedData:
        if self._error is not None:
            raise self._error
        try:
            return self._next_event()
        except MultipartError as exc:
            self._error = exc
            raise

    def _next_event(self) -> Event | NeedData:
        while True:
            state = self._state
            if state is _State.BODY:
                index, found = self._find_delimiter()
                if index > self._pos:
                    data = self._view[self._pos : index]
                    self._pos = index
                    return PartData(data)
                if found is _Delimiter.UNDECIDED:
                    return self._need_data()
                self._after_delimiter(found, index + len(self._delimiter))
                return PartEnd()
            if state is _State.HEADERS:
                headers = self._read_header_line()
                if headers is NEED_DATA:
                    return self._need_data()
                if headers is not None:
                    return headers
            elif state is _State.START:
                dash_boundary = self._delimiter[2:]
                if dash_boundary.startswith(self._data):
                    return self._need_data()
                start = None
                if self._data.startswith(dash_boundary):
                    start = self._classify(len(dash_boundary))
                    if start is _Delimiter.UNDECIDED:
                        return self._need_data()
                self._state = _State.PREAMBLE
                if start is not None:
                    self._first_part(start, len(dash_boundary))
            elif state is _State.PREAMBLE:
                self._pos, found = self._find_delimiter()
                if found is _Delimiter.UNDECIDED:
                    return self._need_data()
                self._first_part(found, self._pos + len(self._delimiter))
            elif state is _State.BOUNDARY_PADDING or state is _State.CLOSE_PADDING:
                if not self._read_padding():
                    if state is _State.CLOSE_PADDING and self._eof and self.buffered == 0:
                        self._state = _State.DONE
                        return Finished()
                    return self._need_data()
                if state is _State.CLOSE_PADDING:
                    self._state = _State.DONE
                    return Finished()
                self._start_part()
            else:
                self._data, self._pos = b"", 0  # the epilogue is ignored
                return NEED_DATA

    def _need_data(self) -> NeedData:
        # Keep only the undecided tail, so a large input chunk is not retained.
        self._data = self._data[self._pos :]
        self._view = memoryview(self._data)
        self._pos = 0
        if self._eof:
            raise MultipartError(self._eof_message())
        return NEED_DATA

    def _eof_message(self) -> str:
        if self._received == 0:
            return "empty body"
        if self._state is _State.START and not self._data.startswith(self._delimiter[2:]):
            return "boundary not found in body"
        if self._state is _State.PREAMBLE and not self._data.startswith(self._delimiter):
            return "boundary not found in body"
        if self._state is _State.CLOSE_PADDING:
            return "bare CR in boundary line"
        return "body ended before the closing boundary"

    def _find_delimiter(self) -> tuple[int, _Delimiter]:
        """The first delimiter at or after the position, or where undecided input begins."""
        data, delimiter = self._data, self._delimiter
        size, width = len(data), len(delimiter)
        index = data.find(delimiter, self._pos)
        while index != -1:
            found = self._classify(index + width)
            if found is not None:
                return index, found
            index = data.find(delimiter, index + 1)
        # A tail that may be the start of a delimiter waits for the next chunk.
        index = data.find(b"\r", max(self._pos, size - width + 1))
        while index != -1 and not delimiter.startswith(data[index:]):
            index = data.find(b"\r", index + 1)
        return (size if index == -1 else index), _Delimiter.UNDECIDED

    def _classify(self, after: int) -> _Delimiter | None:
        """What the bytes after a boundary ending at ``after`` make of it; None: only data."""
        data, size = self._data, len(self._data)
        if after == size:
            return _Delimiter.UNDECIDED
        byte = data[after]
        if byte in _LWSP:
            return _Delimiter.PADDED
        if byte == _LF:
            raise MultipartError("bare LF in boundary line")
        if byte in (_CR, _DASH):
            if after + 1 == size:
                return _Delimiter.UNDECIDED
            if byte == _CR:
                if data[after + 1] != _LF:
                    raise MultipartError("bare CR in boundary line")
                return _Delimiter.OPEN
            if data[after + 1] == _DASH:
                return _Delimiter.CLOSE
        # Anything else means the boundary was only the prefix of longer text.
        return None

    def _first_part(self, found: _Delimiter, end: int) -> None:
        if found is _Delimiter.CLOSE:
            raise MultipartError("closing boundary before any part")
        self._after_delimiter(found, end)

    def _after_delimiter(self, found: _Delimiter, end: int) -> None:
        """Moves past a boundary that ends at ``end`` (the start of what follows it)."""
        if found is _Delimiter.PADDED:
            self._pos = end
            self._state = _State.BOUNDARY_PADDING
        elif found is _Delimiter.OPEN:
            self._pos = end + 2
            self._start_part()
        else:
            self._pos = end + 2
            self._state = _State.CLOSE_PADDING

    def _read_padding(self) -> bool:
        """Consumes transport padding and the CRLF after it; False while more input is needed."""
        data, size, pos = self._data, len(self._data), self._pos
        while pos < size and data[pos] in _LWSP:
            pos += 1
        self._pos = pos
        if pos == size or (data[pos] == _CR and pos + 1 == size):
            return False
        if data[pos] == _CR and data[pos + 1] == _LF:
            self._pos = pos + 2
            return True
        if data[pos] == _CR:
            raise MultipartError("bare CR in boundary line")
        if data[pos] == _LF:
            raise MultipartError("bare LF in boundary line")
        if self._state is _State.CLOSE_PADDING:
            raise MultipartError("unexpected bytes after the closing boundary")
        raise MultipartError("malformed boundary line")

    def _start_part(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise MultipartError(f"more than {MAX_PARTS} parts")
        self._state = _State.HEADERS
        self._header_bytes = 0
        self._headers = []

    def _read_header_line(self) -> PartHeaders | NeedData | None:
        """One header line consumed: the part's headers once the blank line ends them."""
        data, pos = self._data, self._pos
        room = MAX_PART_HEADER_BYTES - self._header_bytes
        end = min(len(data), pos + room)
        newline = data.find(b"\n", pos, end)
        # The earliest fault wins whatever the chunking: a CR that is followed by something
        # other than LF, then a LF without its CR, then the size limit.
        if data.find(b"\r", pos, (end if newline == -1 else newline) - 1) != -1:
            raise MultipartError("bare CR in part headers")
        if newline == -1:
            if len(data) - pos >= room:
                raise MultipartError(f"part headers exceed {MAX_PART_HEADER_BYTES // 1024} KiB")
            return NEED_DATA
        if newline == pos or data[newline - 1] != _CR:
            raise MultipartError("bare LF in part headers")
        line = data[pos : newline - 1]
        self._header_bytes += newline + 1 - pos
        self._pos = newline + 1
        if line:
            self._headers.append(_header_line(line))
            return None
        self._state = _State.BODY
        return _part_headers(self._headers)


class FormCollector:
    """Reads a whole form: text fields (each ≤ 64 KiB) kept, the one file part streamed.

    The part named ``file_field`` goes to ``on_file_data`` chunk by chunk, or into
    ``file_data`` when no callback is given; the parser's ``max_body_bytes`` caps it.
    After a ``MultipartError`` the form is unusable: reject the request.
    """

    def __init__(self, boundary: bytes, *, max_body_bytes: int, file_field: str = "file",
                 on_file_data: Callable[[memoryview], None] | None = None) -> None:
        self._parser = MultipartParser(boundary, max_body_bytes=max_body_bytes)
        self._file_field = file_field
        self._on_file_data = on_file_data
        self.fields: dict[str, list[str]] = {}
        self.file: PartHeaders | None = None
        self.file_data = bytearray()
        self.finished = False
        self._part: PartHeaders | None = None
        self._value = bytearray()

    def field(self, name: str) -> str | None:
        """The first value of a text field, or None when it was not sent."""
        values = self.fields.get(name)
        return values[0] if values else None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Parses the next body chunk; ``b""`` ends the body (raises if it was incomplete)."""
        self._parser.receive_data(data)
        while True:
            event = self._parser.next_event()
            if event is NEED_DATA:
                return
            self._handle(event)

    def _handle(self, event: Event) -> None:
        if isinstance(event, PartHeaders):
            if event.name == self._file_field and self.file is not None:
                raise MultipartError("more than one file part")
            if event.name == self._file_field:
                self.file = event
            self._part = event
            self._value.clear()
        elif isinstance(event, PartData):
            if self._part is self.file:
                if self._on_file_data is not None:
                    self._on_file_data(event.data)
                else:
                    self.file_data += event.data
            elif len(self._value) + len(event.data) > MAX_FIELD_BYTES:
                raise MultipartError(f"form field exceeds {MAX_FIELD_BYTES // 1024} KiB")
            else:
                self._value += event.data
        elif isinstance(event, PartEnd):
            if self._part is not None and self._part is not self.file:
                try:
                    value = self._value.decode("utf-8")
                except UnicodeDecodeError:
                    raise MultipartError("form field is not valid UTF-8") from None
                self.fields.setdefault(self._part.name, []).append(value)
        else:
            self.finished = True
