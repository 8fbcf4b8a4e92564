"""``POST /v1/audio/transcriptions``: OpenAI's transcription API over the file recognizer.

A multipart form in; ``json``, ``text``, ``srt``, ``vtt``, ``verbose_json`` or an SSE stream of
append-only deltas out; every error in OpenAI's ``{"error": {...}}`` shape (docs/api.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np

from gigastt import export, protocol, subtitles
from gigastt.config import HOTWORD_MAX_CHARS, HOTWORDS_REQUEST_MAX
from gigastt.engine.audio import (
    AudioError,
    AudioSource,
    AudioTooLongError,
    UnsupportedSampleRateError,
    open_audio,
)
from gigastt.engine.features import SAMPLE_RATE
from gigastt.engine.files import FileRecognition
from gigastt.engine.hotwords import Hotwords
from gigastt.engine.recognizer import transcript_of
from gigastt.engine.tokenizer import FRAME_SECONDS, Token, join_words
from gigastt.engine.transcript import Transcript, Word
from gigastt.errors import AUDIO_TOO_LONG, REST_ERRORS, ErrorCode
from gigastt.protocol import JSON
from gigastt.server import sse
from gigastt.server.http import Body, Reply, Request, Response, StreamingResponse
from gigastt.server.multipart import (
    FormCollector,
    MultipartError,
    MultipartTooLarge,
    boundary_from_content_type,
)

if TYPE_CHECKING:
    from gigastt.server.routes import ServerState

__all__ = ["PATH", "BadField", "Options", "catalogue_error", "error_type",
           "openai_error", "parse_options", "transcriptions"]

log = logging.getLogger(__name__)

PATH: Final = "/v1/audio/transcriptions"
RESPONSE_FORMATS: Final = ("json", "text", "srt", "verbose_json", "vtt")
STREAM_FORMATS: Final = ("json", "text")
GRANULARITIES: Final = ("word", "segment")
# verbose_json's segment fields that Whisper computes and greedy RNN-T has no counterpart for:
# fixed values (docs/api.md, /v1/audio/transcriptions).
TEMPERATURE: Final = 0.0
COMPRESSION_RATIO: Final = 1.0
NO_SPEECH_PROB: Final = 0.0
LANGUAGE_NAME: Final = "russian"

_JSON_TYPE: Final = (b"content-type", b"application/json")
_DONE: Final = b"data: [DONE]\n\n"
_EXPORTS: Final[dict[str, export.Format]] = {"text": "text", "srt": "srt", "vtt": "vtt"}
_INVALID: Final = "invalid_request_error"
_FAILED: Final = "Transcription failed."


# --- errors ---------------------------------------------------------------------------------


def openai_error(status: int, message: str, type: str, param: str | None = None,
                 code: str | None = None,
                 headers: Sequence[tuple[bytes, bytes]] = ()) -> Response:
    """An error as OpenAI's SDKs read it: ``{"error":{"message","type","param","code"}}``."""
    body = protocol.dumps({"error": {"message": message, "type": type, "param": param,
                                     "code": code}})
    return Response(status, [_JSON_TYPE, *headers], body.encode())


def error_type(status: int) -> str:
    """OpenAI's ``type`` for a status; the SDKs pick their exception by the status alone."""
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else _INVALID


def catalogue_error(code: ErrorCode, *, retry_after: int | None = None) -> Response:
    """A catalogue error (docs/api.md "Errors") in OpenAI's shape: the same status, message
    and code; ``retry_after`` in seconds. The pipeline's refusals on this path use it too."""
    status, message = REST_ERRORS[code]
    headers = [] if retry_after is None else [(b"retry-after", str(retry_after).encode())]
    return openai_error(status, message, error_type(status), None, code.value, headers)


class BadField(Exception):
    """A form field the route refuses: a 400 naming the field (``param``)."""

    def __init__(self, param: str, message: str, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.param = param
        self.code = code

    def response(self) -> Response:
        return openai_error(400, str(self), _INVALID, self.param, self.code)


# --- the form -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    """What the form asks for; ``model``, ``temperature`` and fields this server does not know
    are accepted and ignored (D24). ``prompt`` is read as comma-separated hotword phrases (D29):
    absent, empty or beyond the request bounds keeps the server's list (``prompt_phrases``)."""

    response_format: str
    stream: bool
    words: bool  # `word` timestamp granularity: verbose_json gets `words`
    hotwords: list[str] | None = None


def _single(fields: dict[str, list[str]], name: str) -> str:
    """A field that may be sent once; absent is ``""``."""
    values = fields.get(name, [])
    if len(values) > 1:
        raise BadField(name, f"'{name}' was sent more than once.", "duplicate_parameter")
    return values[0] if values else ""


def parse_options(fields: dict[str, list[str]]) -> Options:
    """The request's options, or ``BadField``. Client values are never echoed back."""
    language = _single(fields, "language")
    if language.lower() not in ("", "ru"):
        # D24: the model is Russian-only; transcribing other speech as Russian helps nobody.
        raise BadField("language", "Only Russian speech is supported: send language 'ru' or "
                       "leave it out.", "unsupported_language")
    response_format = _single(fields, "response_format") or "json"
    if response_format not in RESPONSE_FORMATS:
        raise BadField("response_format", "response_format must be one of json, text, srt, "
                       "verbose_json, vtt.")
    stream = _single(fields, "stream").lower()
    if stream not in ("", "true", "false"):
        raise BadField("stream", "stream must be 'true' or 'false'.")
    if stream == "true" and response_format not in STREAM_FORMATS:
        raise BadField("stream", "stream=true works with response_format json or text.")
    # The official SDK sends `timestamp_granularities[]` once per value; others leave out the
    # brackets. Both are read.
    granularities = [*fields.get("timestamp_granularities[]", []),
                     *fields.get("timestamp_granularities", [])]
    if any(value not in GRANULARITIES for value in granularities):
        raise BadField("timestamp_granularities[]",
                       "timestamp_granularities[] values must be 'word' or 'segment'.")
    return Options(response_format, stream == "true", "word" in granularities,
                   prompt_phrases(fields.get("prompt", [])))


def prompt_phrases(values: list[str]) -> list[str] | None:
    """``prompt`` as hotword phrases (D29), or None (the server's list) when it is empty, sent
    more than once, or not a phrase list within the request bounds: OpenAI clients often send a
    sentence or the previous transcript as ``prompt``, and D24 accepts such fields rather than
    refusing them (before D29 any ``prompt`` was accepted and ignored)."""
    if len(values) != 1:
        return None
    phrases = [item.strip() for item in values[0].split(",") if item.strip()]
    if not phrases or len(phrases) > HOTWORDS_REQUEST_MAX or any(
            len(item) > HOTWORD_MAX_CHARS for item in phrases):
        return None
    return phrases


def _read_form(data: bytearray, boundary: bytes, limit: int) -> tuple[Options, memoryview | bytes]:
    """Parse the whole body; the file comes back as a view of ``data`` (no copy)."""
    views: list[memoryview] = []
    form = FormCollector(boundary, max_body_bytes=limit, on_file_data=views.append)
    form.feed(data)
    form.feed(b"")
    if form.file is None:
        raise BadField("file", "Missing required parameter: 'file'.",
                       "missing_required_parameter")
    options = parse_options(form.fields)
    audio = views[0] if len(views) == 1 else b"".join(views)
    if not audio:
        raise BadField("file", "The uploaded file is empty.", "empty_file")
    return options, audio


# --- recognition ----------------------------------------------------------------------------


def _usage(duration: float) -> JSON:
    return {"type": "duration", "seconds": duration}


def _segments(transcript: Transcript, frames: list[int], tokens: list[Token]) -> list[JSON]:
    """verbose_json ``segments``: the subtitle cues (as in ``srt``/``vtt``), each with the ids
    and mean log-probability of its words' tokens. ``frames`` (sorted) are the tokens' encoder
    frames from the start of the file."""
    segments: list[JSON] = []
    for index, cue in enumerate(subtitles.cues(transcript.words, transcript.duration)):
        low = bisect_left(frames, round(cue.words[0].start / FRAME_SECONDS))
        high = bisect_right(frames, round(cue.words[-1].end / FRAME_SECONDS))
        members = tokens[low:high]
        logprob = float(np.mean([t.logp for t in members])) if members else 0.0
        segments.append({
            "id": index, "seek": cue.start_ms // 10, "start": cue.start, "end": cue.end,
            "text": cue.text, "tokens": [t.id for t in members], "temperature": TEMPERATURE,
            "avg_logprob": logprob, "compression_ratio": COMPRESSION_RATIO,
            "no_speech_prob": NO_SPEECH_PROB,
        })
    return segments


async def _transcribe(state: ServerState, source: AudioSource, options: Options,
                      hotwords: Hotwords | None = None) -> Response:
    from gigastt.server.routes import count_vad  # routes imports this module

    frames: list[int] = []
    tokens: list[Token] = []
    words: list[Word] = []
    # D28: with the VAD loaded, pauses are skipped as on /v1/transcribe (word times unchanged).
    recognition = FileRecognition(state.executor, state.vocab, source, vad=state.vad_loaded,
                                  hotwords=hotwords)
    async for window, window_tokens, window_words in recognition.windows():
        frames += [window.frame_offset + t.frame for t in window_tokens]
        tokens += window_tokens
        words += window_words
    count_vad(state, recognition, "openai")
    transcript = transcript_of(words, recognition.samples)
    # Seconds of CPU for hours of audio: off the event loop, like /v1/transcribe's rendering.
    return await asyncio.to_thread(_render, transcript, options, frames, tokens)


def _render(transcript: Transcript, options: Options, frames: list[int],
            tokens: list[Token]) -> Response:
    fmt = options.response_format
    exported = _EXPORTS.get(fmt)
    if exported is not None:
        content_type = (b"content-type", export.CONTENT_TYPES[exported])
        return Response(200, [content_type], export.render(transcript, exported).encode())
    usage = _usage(transcript.duration)
    if fmt == "json":
        body: JSON = {"text": transcript.text, "usage": usage}
    else:
        verbose: dict[str, JSON] = {
            "task": "transcribe", "language": LANGUAGE_NAME, "duration": transcript.duration,
            "text": transcript.text, "segments": _segments(transcript, frames, tokens),
        }
        if options.words:
            verbose["words"] = [{"word": w.word, "start": w.start, "end": w.end}
                                for w in transcript.words]
        verbose["usage"] = usage
        body = verbose
    return Response(200, [_JSON_TYPE], protocol.dumps(body).encode())


def _event(payload: JSON) -> bytes:
    return sse.event(protocol.dumps(payload))


async def _deltas(state: ServerState, source: AudioSource, out: asyncio.Queue[bytes | None],
                  hotwords: Hotwords | None = None) -> None:
    """``stream=true``: a delta per recognised window (final text only, so deltas only ever
    append), then the done event and ``[DONE]``; bad samples found on the way end the stream
    with an ``invalid_request_error`` event instead."""
    text = ""
    recognition = FileRecognition(state.executor, state.vocab, source, vad=False,
                                  hotwords=hotwords)
    try:
        async for _, _, words in recognition.windows():
            if words:
                delta = (" " if text else "") + join_words(words)
                text += delta
                await out.put(_event({"type": "transcript.text.delta", "delta": delta}))
    except AudioError as exc:
        log.info("event stream: undecodable audio (%s)", type(exc).__name__)
        await out.put(_STREAM_TOO_LONG if isinstance(exc, AudioTooLongError)
                      else _STREAM_INVALID_AUDIO)
        return
    duration = recognition.samples / SAMPLE_RATE
    await out.put(_event({"type": "transcript.text.done", "text": text,
                          "usage": _usage(duration)}))
    await out.put(_DONE)


# The SDKs raise APIError on an `error` event in the stream.
_STREAM_FAILED = _event({"error": {"message": _FAILED, "type": "server_error", "param": None,
                                   "code": ErrorCode.INFERENCE_ERROR.value}})
_STREAM_INVALID_AUDIO, _STREAM_TOO_LONG = (_event({"error": {
    "message": message, "type": _INVALID, "param": None, "code": ErrorCode.INVALID_AUDIO.value}})
    for message in (REST_ERRORS[ErrorCode.INVALID_AUDIO].message, AUDIO_TOO_LONG))


# --- the handler ----------------------------------------------------------------------------


def _is_multipart(content_type: bytes) -> bool:
    return content_type.partition(b";")[0].strip(b" \t").lower() == b"multipart/form-data"


async def transcriptions(state: ServerState, request: Request, body: Body) -> Reply:
    """The route's handler: origin, rate limit and API key were checked by the pipeline."""
    if request.method == "OPTIONS":
        return Response(204)
    # Imported here: routes imports this module for its routing table.
    from gigastt.server.routes import checkout, hotwords_for, read_audio_body

    content_type = request.header(b"content-type") or b""
    # Both refusals come before the body is read (the driver then closes the connection).
    if not _is_multipart(content_type):
        return openai_error(415, "Content-Type must be multipart/form-data.", _INVALID, None,
                            "unsupported_media_type")
    try:
        boundary = boundary_from_content_type(content_type)
    except MultipartError as exc:
        return openai_error(400, f"Malformed multipart body: {exc}.", _INVALID, None,
                            "invalid_multipart")
    limit = state.limits.body_limit_bytes
    data = await read_audio_body(state, body, catalogue_error)
    if isinstance(data, Response):
        return data
    try:
        # The whole body is in memory already (Body reads it whole); parsing runs off the loop.
        options, audio = await asyncio.to_thread(_read_form, data, boundary, limit)
    except MultipartTooLarge:
        return catalogue_error(ErrorCode.PAYLOAD_TOO_LARGE)
    except MultipartError as exc:  # its messages are fixed texts, safe to show (multipart.py)
        return openai_error(400, f"Malformed multipart body: {exc}.", _INVALID, None,
                            "invalid_multipart")
    except BadField as exc:
        return exc.response()
    hotwords = hotwords_for(state, options.hotwords)
    if isinstance(hotwords, ErrorCode):
        return catalogue_error(hotwords)
    del data  # `audio` is a view of it: the bytes stay alive exactly as long as they are needed
    slot = await checkout(state, catalogue_error)
    if isinstance(slot, Response):
        return slot
    started = time.monotonic()
    streaming = False
    try:
        # The slot is held during decoding too, as on /v1/transcribe; the header is checked
        # first, the samples decoded window by window (D30).
        source = await asyncio.to_thread(open_audio, audio,
                                         max_seconds=state.limits.audio_seconds_cap)
        del audio
        if options.stream:
            streaming = True
            stream = sse.EventStream(lambda out: _deltas(state, source, out, hotwords), slot,
                                     _STREAM_FAILED)
            return StreamingResponse(200, list(sse.HEADERS), stream)
        reply = await _transcribe(state, source, options, hotwords)
    except UnsupportedSampleRateError:
        return catalogue_error(ErrorCode.UNSUPPORTED_SAMPLE_RATE)
    except AudioError as exc:
        log.info("request %s: undecodable audio (%s)", request.request_id, type(exc).__name__)
        return catalogue_error(ErrorCode.INVALID_AUDIO)
    except Exception:
        log.exception("request %s: inference failed", request.request_id)
        return openai_error(500, _FAILED, "server_error", None, ErrorCode.INFERENCE_ERROR.value)
    finally:
        if not streaming:
            slot.release()
            if state.metrics:
                state.metrics.observe_inference(time.monotonic() - started)
    log.info("request %s: transcribed %.2f s of audio (%s) in %.3f s", request.request_id,
             source.frames / source.rate if source.frames else 0.0, options.response_format,
             time.monotonic() - started)
    return reply
