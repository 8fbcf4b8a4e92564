"""What each request means: the pipeline (docs/architecture.md §6) and the REST, SSE and upgrade
handlers.

Handlers receive parsed requests from ``http.py`` and reach the model only through the executor.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import parse_qsl

from gigastt import __version__, errors, export, protocol
from gigastt.config import ConfigError, Limits, ServeConfig, parse_bool
from gigastt.engine.audio import (
    AudioError,
    AudioSource,
    UnsupportedSampleRateError,
    open_audio,
    supported_formats,
)
from gigastt.engine.executor import InferenceExecutor
from gigastt.engine.features import SAMPLE_RATE
from gigastt.engine.files import FileRecognition
from gigastt.engine.hotwords import TOO_LONG, Hotwords, HotwordsError, compile_phrases, parse_list
from gigastt.engine.model import ModelInfo
from gigastt.engine.recognizer import Recognizer
from gigastt.engine.tokenizer import Vocabulary
from gigastt.engine.vadlane import VadLane
from gigastt.errors import ErrorCode
from gigastt.jobs.runner import JobRunner
from gigastt.server import jobs, openai, sse, ui, websocket
from gigastt.server.admission import AdmissionPool, PoolClosed, PoolTimeout, Slot
from gigastt.server.auth import CHALLENGE, ApiKeyPolicy
from gigastt.server.budget import BUSY_RETRY_AFTER_SECS
from gigastt.server.http import (
    Body,
    BodyTooLarge,
    Headers,
    Reply,
    Request,
    Response,
    ServerBusy,
    StreamingResponse,
)
from gigastt.server.metrics import ServerMetrics
from gigastt.server.origin import OriginPolicy
from gigastt.server.ratelimit import RateLimiter, client_ip

log = logging.getLogger(__name__)

JSON_TYPE = (b"content-type", b"application/json")
METRICS_TYPE = (b"content-type", b"text/plain; version=0.0.4; charset=utf-8")

GET_HEAD = ("GET", "HEAD")
POST_OPTIONS = ("POST", "OPTIONS")
WS_PATH = "/v1/ws"


@dataclass
class ServerState:
    """Everything the handlers share; mutated only on the event loop."""

    config: ServeConfig
    limits: Limits
    executor: InferenceExecutor[Recognizer]
    model: ModelInfo
    vocab: Vocabulary
    pool: AdmissionPool
    origin: OriginPolicy
    metrics: ServerMetrics | None = None
    limiter: RateLimiter | None = None
    auth: ApiKeyPolicy = field(default_factory=ApiKeyPolicy)
    shutdown: asyncio.Event = field(default_factory=asyncio.Event)
    # The live capacity measured by --pool-size auto (D27); None without it.
    capacity: int | None = None
    # D28: the Silero VAD was loaded with the model (recognizer.vad); /health and /v1/models
    # report it, the file routes use it on the bulk lane, live sessions on this lane.
    vad_lane: VadLane | None = None
    # The job queue (D31); None without --jobs-dir.
    jobs: JobRunner | None = None
    # D29: the server's compiled phrase list (--hotwords-file; None: none) and the boost that
    # requests' own lists are compiled with.
    hotwords: Hotwords | None = None
    hotwords_boost: float = 0.0

    @property
    def draining(self) -> bool:
        return self.shutdown.is_set()

    @property
    def vad_loaded(self) -> bool:
        return self.vad_lane is not None


RouteHandler = Callable[[ServerState, Request, Body], Awaitable[Reply]]


class ErrorShape(Protocol):
    """A catalogue error as a route's body shape: ``error_response``, or the OpenAI route's."""

    def __call__(self, code: ErrorCode, *, retry_after: int | None = None) -> Response: ...


def json_response(status: int, body: str, headers: Headers | None = None) -> Response:
    return Response(status, [JSON_TYPE, *(headers or [])], body.encode())


def error_response(code: ErrorCode, *, retry_after: int | None = None) -> Response:
    """A catalogue error (docs/api.md "Errors") as a JSON response; ``retry_after`` in seconds."""
    headers: Headers = []
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    retry_ms = None
    if code is ErrorCode.TIMEOUT and retry_after is not None:
        retry_ms = errors.checkout_retry_ms(retry_after)
    status, body = errors.rest_error_response(code, retry_ms)
    return json_response(status, body, headers)


def rejection(request: Request, code: ErrorCode, *, retry_after: int | None = None) -> Response:
    """A refusal of the pipeline itself (403 origin, 429 rate limit, 401 API key), in the route's
    error shape; ``retry_after`` in seconds."""
    shape = ERROR_SHAPES.get(request.path)
    if shape is not None:  # a route with its own error body (the OpenAI one, docs/api.md)
        reply = shape(code, retry_after=retry_after)
    else:
        # D22: a WebSocket client reads the wait from the refused upgrade's body too.
        retry_ms = (retry_after * 1000 if retry_after is not None and request.path == WS_PATH
                    else None)
        status, body = errors.rest_error_response(code, retry_ms)
        reply = json_response(status, body)
        if retry_after is not None:
            reply.headers.append((b"retry-after", str(retry_after).encode()))
    if code is ErrorCode.UNAUTHORIZED:
        reply.headers.append(CHALLENGE)
    return reply


async def checkout(state: ServerState, shape: ErrorShape = error_response) -> Slot | Response:
    """An admission slot, or the 503 that says why there is none (D3 in docs/decisions.md)."""
    timeout = state.limits.pool_checkout_timeout_secs
    started = time.monotonic()
    try:
        slot = await state.pool.acquire(timeout)
    except PoolTimeout:
        if state.metrics:
            state.metrics.observe_checkout(time.monotonic() - started)
            state.metrics.pool_timeout()
        log.warning("pool checkout timed out after %ss", timeout)
        return shape(ErrorCode.TIMEOUT, retry_after=timeout)
    except PoolClosed:
        return shape(ErrorCode.POOL_CLOSED)
    if state.metrics:
        state.metrics.observe_checkout(time.monotonic() - started)
    return slot


async def read_audio_body(state: ServerState, body: Body,
                          shape: ErrorShape = error_response) -> bytearray | Response:
    try:
        data = await body.read(state.limits.body_limit_bytes)
    except BodyTooLarge:
        # Decision D9: always a JSON body; the body stays unread, so the connection closes.
        return shape(ErrorCode.PAYLOAD_TOO_LARGE)
    except ServerBusy:
        # The in-flight body budget is full: refused before the body was read, so the
        # connection closes (docs/runbook.md, "in-flight bodies").
        return shape(ErrorCode.SERVER_BUSY, retry_after=BUSY_RETRY_AFTER_SECS)
    if not data:
        return shape(ErrorCode.EMPTY_BODY)
    return data


# --- handlers -------------------------------------------------------------------------------


HEALTH_BODY = protocol.health(__version__).encode()  # constant: not re-serialised per probe
HEALTH_BODY_VAD = protocol.health(__version__, vad=True).encode()


async def health(state: ServerState, request: Request, body: Body) -> Reply:
    if state.model.head.model_id != protocol.MODEL_ID:  # D29: another head than the default
        return Response(200, [JSON_TYPE], protocol.health(
            __version__, vad=state.vad_loaded, model=state.model.head.model_id).encode())
    return Response(200, [JSON_TYPE], HEALTH_BODY_VAD if state.vad_loaded else HEALTH_BODY)


async def ready(state: ServerState, request: Request, body: Body) -> Reply:
    status, text = protocol.ready_status(
        pool_available=state.pool.available, pool_total=state.pool.total,
        shutting_down=state.draining,
    )
    return json_response(status, text)


async def models(state: ServerState, request: Request, body: Body) -> Reply:
    return json_response(200, protocol.models(
        version=__version__, encoder=state.model.encoder, vocab_size=state.model.vocab_size,
        pool_size=state.pool.total, pool_available=state.pool.available,
        supported_formats=supported_formats(), capacity=state.capacity,
        vad=state.vad_loaded, model=state.model.head.model_id, name=state.model.head.display,
    ))


def hotwords_for(state: ServerState, phrases: list[str] | None) -> Hotwords | ErrorCode | None:
    """A request's phrase list (D29): None (not given) keeps the server's, ``[]`` turns biasing
    off, otherwise the list replaces the server's; its bounds' error code if it breaks them."""
    if phrases is None:
        return state.hotwords
    try:
        parsed = parse_list(phrases)
    except HotwordsError as exc:
        return (ErrorCode.HOTWORD_PHRASE_TOO_LONG if exc.code == TOO_LONG
                else ErrorCode.TOO_MANY_HOTWORDS)
    return compile_phrases(parsed, state.vocab, state.hotwords_boost)


def query_phrases(query: str) -> list[str] | None:
    """The ``hotwords`` parameter's phrases: comma-separated (given several times, the lists
    join); None when absent, ``[]`` when empty (biasing off for this request)."""
    values = [value for key, value in parse_qsl(query, keep_blank_values=True, errors="replace")
              if key == "hotwords"]
    if not values:
        return None
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


@dataclass(frozen=True, slots=True)
class FileOptions:
    """The query options of the file routes (``vad``, ``hotwords``), checked before the body is
    read so that a typo costs no upload (D28, D29)."""

    vad: bool
    phrases: list[str] | None  # as given (jobs keep them); None: absent
    hotwords: Hotwords | None  # compiled: the request's, else the server's


def file_options(state: ServerState, query: str) -> FileOptions | Response:
    use_vad = vad_from_query(query)
    if use_vad is None:
        return error_response(ErrorCode.INVALID_VAD)
    phrases = query_phrases(query)
    hotwords = hotwords_for(state, phrases)
    if isinstance(hotwords, ErrorCode):
        return error_response(hotwords)
    return FileOptions(use_vad, phrases, hotwords)


async def transcribe(state: ServerState, request: Request, body: Body) -> Reply:
    if request.method == "OPTIONS":
        return Response(204)
    # Checked before the body is read, so a typo costs no upload and no inference (the driver
    # then closes the connection: docs/api.md, /v1/transcribe).
    fmt = export.format_from_query(request.target.partition("?")[2])
    if fmt is None:
        return error_response(ErrorCode.UNSUPPORTED_FORMAT)
    options = file_options(state, request.target.partition("?")[2])
    if isinstance(options, Response):
        return options
    data = await read_audio_body(state, body)
    if isinstance(data, Response):
        return data
    slot = await checkout(state)
    if isinstance(slot, Response):
        return slot
    started = time.monotonic()
    try:
        # Decoding and resampling are CPU work: off the event loop and the inference lanes,
        # window by window (D30).
        source = await asyncio.to_thread(open_audio, data,
                                         max_seconds=state.limits.audio_seconds_cap)
        del data  # the source holds the bytes exactly as long as it needs them
        recognition = file_recognition(state, source, options)
        result = await recognition.transcript()
        count_vad(state, recognition, "transcribe")
        del source, recognition  # the request's bytes: not held while the reply is rendered
    except UnsupportedSampleRateError:
        return error_response(ErrorCode.UNSUPPORTED_SAMPLE_RATE)
    except AudioError as exc:
        log.info("request %s: undecodable audio (%s)", request.request_id, type(exc).__name__)
        return error_response(ErrorCode.TRANSCRIPTION_ERROR)
    except Exception:
        log.exception("request %s: inference failed", request.request_id)
        return error_response(ErrorCode.TRANSCRIPTION_ERROR)
    finally:
        slot.release()
        if state.metrics:
            state.metrics.observe_inference(time.monotonic() - started)
    log.info("request %s: transcribed %.2f s of audio into %d words in %.3f s",
             request.request_id, result.duration, len(result.words), time.monotonic() - started)
    content_type = (b"content-type", export.CONTENT_TYPES[fmt])
    # Up to --max-audio-secs of words (D30): seconds of CPU for hours, so off the event loop.
    rendered = await asyncio.to_thread(export.render, result, fmt)
    return Response(200, [content_type], rendered.encode())


def vad_from_query(query: str) -> bool | None:
    """The ``vad`` parameter of a URL query (D28): True when absent, None when it is not a D6
    boolean or is given more than once."""
    values = [value for key, value in parse_qsl(query, keep_blank_values=True, errors="replace")
              if key == "vad"]
    if not values:
        return True
    if len(values) > 1:
        return None
    try:
        return parse_bool("vad", values[0])
    except ConfigError:
        return None


def file_recognition(state: ServerState, source: AudioSource,
                     options: FileOptions) -> FileRecognition:
    """A file through the pipeline with the request's options: the VAD's windows when it is
    loaded and not turned off (D28), the request's or the server's phrase list (D29)."""
    return FileRecognition(state.executor, state.vocab, source,
                           vad=options.vad and state.vad_loaded, hotwords=options.hotwords)


def count_vad(state: ServerState, recognition: FileRecognition, route: str) -> None:
    """Count a file's audio and speech seconds per route once the VAD has read it (docs/api.md
    "GET /metrics")."""
    if recognition.speech_samples is not None and state.metrics:
        state.metrics.vad_seen(route, recognition.samples / SAMPLE_RATE,
                               recognition.speech_samples / SAMPLE_RATE)


async def transcribe_stream(state: ServerState, request: Request, body: Body) -> Reply:
    if request.method == "OPTIONS":
        return Response(204)
    options = file_options(state, request.target.partition("?")[2])
    if isinstance(options, Response):
        return options
    data = await read_audio_body(state, body)
    if isinstance(data, Response):
        return data
    try:
        # The header is checked before taking a slot (docs/architecture.md §8); the samples
        # are decoded as the stream goes.
        source = await asyncio.to_thread(open_audio, data,
                                         max_seconds=state.limits.audio_seconds_cap)
    except UnsupportedSampleRateError:
        return error_response(ErrorCode.UNSUPPORTED_SAMPLE_RATE)
    except AudioError as exc:
        log.info("request %s: undecodable audio (%s)", request.request_id, type(exc).__name__)
        return error_response(ErrorCode.INVALID_AUDIO)
    del data
    slot = await checkout(state)
    if isinstance(slot, Response):
        return slot
    progress = _query_flag(request.target.partition("?")[2], "progress")
    chunks = sse.EventStream(
        lambda out: sse.recognise(state.executor, state.vocab, source, state.shutdown, out,
                                  progress=progress, vad=options.vad and state.vad_loaded,
                                  metrics=state.metrics, hotwords=options.hotwords),
        slot, sse.event(protocol.sse_error()))
    return StreamingResponse(200, list(sse.HEADERS), chunks)


def _query_flag(query: str, name: str) -> bool:
    """An opt-in query flag: ``name=true`` or ``name=1`` (any case); anything else is off."""
    return any(key == name and value.lower() in ("true", "1")
               for key, value in parse_qsl(query, keep_blank_values=True))


async def ws_upgrade(state: ServerState, request: Request, body: Body) -> Reply:
    # The key may come as a subprotocol here (D23), so the upgrade checks it itself, first.
    auth = state.auth.check(request.header(b"authorization"),
                            websocket.offered_subprotocols(request))
    if not auth.allowed:
        log.info("request %s: missing or wrong API key", request.request_id)
        return rejection(request, ErrorCode.UNAUTHORIZED)
    if state.draining:
        return error_response(ErrorCode.SHUTTING_DOWN)
    return websocket.upgrade(request, websocket.session_settings(state), auth.subprotocol)


async def metrics(state: ServerState, request: Request, body: Body) -> Reply:
    if state.metrics is None:
        return error_response(ErrorCode.METRICS_DISABLED)
    # The gauges are read from their sources now, so a scrape is current whatever was requested
    # before it (docs/api.md, /metrics).
    state.metrics.set_pool(state.pool.available, state.pool.waiters)
    return Response(200, [METRICS_TYPE], state.metrics.render().encode())


ROUTES: dict[str, tuple[tuple[str, ...], RouteHandler]] = {
    "/v1/models": (GET_HEAD, models),
    "/v1/transcribe": (POST_OPTIONS, transcribe),
    "/v1/transcribe/stream": (POST_OPTIONS, transcribe_stream),
    WS_PATH: (("GET",), ws_upgrade),
    "/metrics": (GET_HEAD, metrics),
    openai.PATH: (POST_OPTIONS, openai.transcriptions),
    jobs.PATH: (POST_OPTIONS, jobs.create),
}
# Routes for every path under a prefix: prefix -> (metrics label, methods, handler).
PREFIX_ROUTES: dict[str, tuple[str, tuple[str, ...], RouteHandler]] = {
    jobs.ITEM_PREFIX: (jobs.ITEM_LABEL, jobs.ITEM_METHODS, jobs.item),
}
# Routes whose errors, the pipeline's refusals included, have their own body shape.
ERROR_SHAPES: dict[str, ErrorShape] = {openai.PATH: openai.catalogue_error}
UNGUARDED: dict[str, RouteHandler] = {"/health": health, "/ready": ready}


# --- the pipeline ---------------------------------------------------------------------------


async def handle(state: ServerState, request: Request, body: Body) -> Reply:
    """The pipeline (docs/architecture.md §6): probes → origin → rate limit → API key → dispatch.

    The API key is checked after the rate limiter, so that a wrong key costs a token like any
    request, and before any handler, so that it never reaches the body or an inference slot.
    """
    path = request.path
    if path in UNGUARDED:
        if request.method not in GET_HEAD:
            return Response(405, [(b"allow", b"GET,HEAD")])
        return await UNGUARDED[path](state, request, body)
    if state.config.ui and path in ui.PATHS:
        # The browser page: static public files, so like the probes it passes no origin check,
        # rate limit or API key (the key is typed into the page; D55, docs/api.md).
        return ui.respond(request)
    origin = _origin(request)
    decision = state.origin.decide(origin)
    if not decision.allowed:
        # The route, never the raw path: a job's path holds its secret id (D31).
        log.warning("origin denied: %r on %s", origin,
                    path if path in ROUTES else _prefix_route(path)[0])
        return rejection(request, ErrorCode.ORIGIN_DENIED)
    if state.limiter is not None:
        ip = client_ip(request.peer, request.headers, trust_private=state.config.trust_proxy)
        now = time.monotonic()
        if ip is not None and not state.limiter.allow(ip, now):
            log.debug("rate limited %s", ip)
            if state.metrics:
                state.metrics.rate_limited()
            limited = rejection(request, ErrorCode.RATE_LIMITED,
                                retry_after=state.limiter.retry_after(ip, now))
            return _with_headers(limited, decision.headers)
    started = time.monotonic()
    route = ROUTES.get(path)
    route_label = path
    if route is None:
        route_label, route = _prefix_route(path)
    if not _authorized(state, request):
        log.info("request %s: missing or wrong API key", request.request_id)
        reply: Reply = rejection(request, ErrorCode.UNAUTHORIZED)
        label = "other" if route is None else route_label
    elif route is None:
        reply = Response(404)
        label = "other"
    else:
        methods, handler = route
        label = route_label
        if request.method in methods:
            reply = await handler(state, request, body)
        else:
            allow = (b"POST,OPTIONS" if methods == POST_OPTIONS else b"GET,HEAD"
                     if methods in (GET_HEAD, ("GET",)) else ",".join(methods).encode())
            reply = Response(405, [(b"allow", allow)])
    if state.metrics:
        state.metrics.observe_request(request.method, label, _status(reply),
                                      time.monotonic() - started)
    return _with_headers(reply, decision.headers)


def _prefix_route(path: str) -> tuple[str, tuple[tuple[str, ...], RouteHandler] | None]:
    """The route of a path under a ``PREFIX_ROUTES`` prefix, with its metrics label."""
    for prefix, (label, methods, handler) in PREFIX_ROUTES.items():
        if path.startswith(prefix) and len(path) > len(prefix):
            return label, (methods, handler)
    return "other", None


def _authorized(state: ServerState, request: Request) -> bool:
    """D23 for every path but the probes, known or not (docs/api.md "Authentication")."""
    # A CORS preflight never carries credentials (browsers leave them out), and the upgrade
    # checks its own: the key may come as a subprotocol.
    if request.method == "OPTIONS" or (request.path == WS_PATH and request.method == "GET"):
        return True
    return state.auth.check(request.header(b"authorization")).allowed


def _origin(request: Request) -> str | None:
    value = request.header(b"origin")
    if value is None or not all(0x20 <= b <= 0x7E for b in value):
        return None
    return value.decode("ascii")


def _status(reply: Reply) -> int:
    return getattr(reply, "status", 101)


def _with_headers(reply: Reply, extra: tuple[tuple[bytes, bytes], ...]) -> Reply:
    if extra:
        names = {name for name, _ in extra}
        reply.headers[:] = [h for h in reply.headers if h[0] not in names] + list(extra)
    return reply
