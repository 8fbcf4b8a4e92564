"""A transcript as a file: the ``json``, ``text``, ``srt`` and ``vtt`` exports and their types.

One writer for ``POST /v1/transcribe?format=`` and ``gigastt transcribe --format`` (docs/api.md).
"""

from __future__ import annotations

from typing import Literal, TypeAlias, get_args
from urllib.parse import parse_qsl

from gigastt import subtitles
from gigastt.engine.transcript import Transcript

__all__ = ["CONTENT_TYPES", "FORMATS", "Format", "format_from_query", "render"]

Format: TypeAlias = Literal["json", "text", "srt", "vtt"]
FORMATS: tuple[Format, ...] = get_args(Format)
_BY_NAME: dict[str, Format] = {fmt: fmt for fmt in FORMATS}

CONTENT_TYPES: dict[Format, bytes] = {
    "json": b"application/json",
    "text": b"text/plain; charset=utf-8",
    "srt": b"application/x-subrip; charset=utf-8",
    "vtt": b"text/vtt; charset=utf-8",
}


def render(transcript: Transcript, fmt: Format) -> str:
    """The body of ``fmt``: ``json`` is the ``/v1/transcribe`` object, ``text`` the text and a
    newline, ``srt``/``vtt`` the subtitles of ``gigastt.subtitles``."""
    if fmt == "json":
        # Imported here: the protocol module loads numpy, which `gigastt --help` need not wait for.
        from gigastt.protocol import transcribe_body

        return transcribe_body(transcript)
    if fmt == "text":
        return transcript.text + "\n"
    return subtitles.render_subtitles(transcript, fmt)


def format_from_query(query: str) -> Format | None:
    """The ``format`` parameter of a URL query (``json`` when absent), or None when it names
    no export or is given more than once. Other parameters are ignored."""
    values = [value for key, value in parse_qsl(query, keep_blank_values=True, errors="replace")
              if key == "format"]
    if not values:
        return "json"
    return _BY_NAME.get(values[0]) if len(values) == 1 else None
