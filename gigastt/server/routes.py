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

from gigastt import __version__, errors, export, protocol
from gigastt.config import Limits, ServeConfig
from gigastt.engine import executor as inference
from gigastt.engine.audio import (
    AudioError,
    UnsupportedSampleRateError,
    load_audio,
    supported_formats,
)
from gigastt.engine.executor import InferenceExecutor
from gigastt.engine.model import ModelInfo
from gigastt.engine.recognizer import Recognizer
from gigastt.engine.tokenizer import Vocabulary
from gigastt.errors import ErrorCode
from gigastt.server import openai, sse, websocket
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

    @property
    def draining(self) -> bool:
        return self.shutdown.is_set()


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
                          shape: ErrorShape = error_response) -> bytes | Response:
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


async def health(state: ServerState, request: Request, body: Body) -> Reply:
    return Response(200, [JSON_TYPE], HEALTH_BODY)


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
    ))


async def transcribe(state: ServerState, request: Request, body: Body) -> Reply:
    if request.method == "OPTIONS":
        return Response(204)
    # Checked before the body is read, so a typo costs no upload and no inference (the driver
    # then closes the connection: docs/api.md, /v1/transcribe).
    fmt = export.format_from_query(request.target.partition("?")[2])
    if fmt is None:
        return error_response(ErrorCode.UNSUPPORTED_FORMAT)
    data = await read_audio_body(state, body)
    if isinstance(data, Response):
        return data
    slot = await checkout(state)
    if isinstance(slot, Response):
        return slot
    started = time.monotonic()
    try:
        # Decoding and resampling are CPU work: off the event loop and the inference lanes.
        samples = await asyncio.to_thread(load_audio, data)
        del data
        result = await inference.transcribe(state.executor, state.vocab, samples)
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
    return Response(200, [content_type], export.render(result, fmt).encode())


async def transcribe_stream(state: ServerState, request: Request, body: Body) -> Reply:
    if request.method == "OPTIONS":
        return Response(204)
    data = await read_audio_body(state, body)
    if isinstance(data, Response):
        return data
    try:
        # Decode before taking a slot (docs/architecture.md §8).
        samples = await asyncio.to_thread(load_audio, data)
    except UnsupportedSampleRateError:
        return error_response(ErrorCode.UNSUPPORTED_SAMPLE_RATE)
    except AudioError as exc:
        log.info("request %s: undecodable audio (%s)", request.request_id, type(exc).__name__)
        return error_response(ErrorCode.INVALID_AUDIO)
    del data
    slot = await checkout(state)
    if isinstance(slot, Response):
        return slot
    chunks = sse.EventStream(
        lambda out: sse.recognise(state.executor, state.vocab, samples, state.shutdown, out),
        slot, sse.event(protocol.sse_error()))
    return StreamingResponse(200, list(sse.HEADERS), chunks)


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
    origin = _origin(request)
    decision = state.origin.decide(origin)
    if not decision.allowed:
        log.warning("origin denied: %r on %s", origin, path)
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
    if not _authorized(state, request):
        log.info("request %s: missing or wrong API key", request.request_id)
        reply: Reply = rejection(request, ErrorCode.UNAUTHORIZED)
        label = "other" if route is None else path
    elif route is None:
        reply = Response(404)
        label = "other"
    else:
        methods, handler = route
        label = path
        if request.method in methods:
            reply = await handler(state, request, body)
        else:
            allow = b"POST,OPTIONS" if methods == POST_OPTIONS else b"GET,HEAD"
            reply = Response(405, [(b"allow", allow)])
    if state.metrics:
        state.metrics.observe_request(request.method, label, _status(reply),
                                      time.monotonic() - started)
    return _with_headers(reply, decision.headers)


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
