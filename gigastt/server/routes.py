"""What each request means: the pipeline of server.md §2.1 and the REST, SSE and upgrade handlers.

Handlers receive parsed requests from ``http.py`` and reach the model only through the executor.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gigastt import __version__, errors, protocol
from gigastt.config import Limits, ServeConfig
from gigastt.engine import executor as inference
from gigastt.engine.audio import AudioError, load_audio, supported_formats
from gigastt.engine.executor import InferenceExecutor
from gigastt.engine.model import ModelInfo
from gigastt.engine.recognizer import Recognizer
from gigastt.engine.tokenizer import Vocabulary
from gigastt.errors import ErrorCode
from gigastt.server import sse, websocket
from gigastt.server.admission import AdmissionPool, PoolClosed, PoolTimeout, Slot
from gigastt.server.http import (
    Body,
    BodyTooLarge,
    Headers,
    Reply,
    Request,
    Response,
    StreamingResponse,
)
from gigastt.server.metrics import ServerMetrics
from gigastt.server.origin import OriginPolicy
from gigastt.server.ratelimit import RETRY_AFTER_SECS, RateLimiter, client_ip

log = logging.getLogger(__name__)

JSON_TYPE = (b"content-type", b"application/json")
METRICS_TYPE = (b"content-type", b"text/plain; version=0.0.4; charset=utf-8")

GET_HEAD = ("GET", "HEAD")
POST_OPTIONS = ("POST", "OPTIONS")


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
    shutdown: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def draining(self) -> bool:
        return self.shutdown.is_set()


RouteHandler = Callable[[ServerState, Request, Body], Awaitable[Reply]]


def json_response(status: int, body: str, headers: Headers | None = None,
                  *, close: bool = False) -> Response:
    return Response(status, [JSON_TYPE, *(headers or [])], body.encode(), close=close)


def error_response(code: ErrorCode, *, retry_after: int | None = None,
                   close: bool = False) -> Response:
    """A catalogue error (server.md §9) as a JSON response; ``retry_after`` in seconds."""
    headers: Headers = []
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    retry_ms = None
    if code is ErrorCode.TIMEOUT and retry_after is not None:
        retry_ms = errors.checkout_retry_ms(retry_after)
    status, body = errors.rest_error_response(code, retry_ms)
    return json_response(status, body, headers, close=close)


def payload_too_large() -> Response:
    # Decision D9: always JSON, and the connection closes (the body was not read).
    return error_response(ErrorCode.PAYLOAD_TOO_LARGE, close=True)


async def checkout(state: ServerState) -> Slot | Response:
    """An admission slot, or the 503 that says why there is none (server.md §2.6 step 4)."""
    timeout = state.limits.pool_checkout_timeout_secs
    started = time.monotonic()
    try:
        slot = await state.pool.acquire(timeout)
    except PoolTimeout:
        if state.metrics:
            state.metrics.observe_checkout(time.monotonic() - started)
            state.metrics.pool_timeout()
        log.warning("pool checkout timed out after %ss", timeout)
        return error_response(ErrorCode.TIMEOUT, retry_after=timeout)
    except PoolClosed:
        return error_response(ErrorCode.POOL_CLOSED)
    if state.metrics:
        state.metrics.observe_checkout(time.monotonic() - started)
    return slot


async def read_audio_body(state: ServerState, body: Body) -> bytes | Response:
    try:
        data = await body.read(state.limits.body_limit_bytes)
    except BodyTooLarge:
        return payload_too_large()
    if not data:
        return error_response(ErrorCode.EMPTY_BODY)
    return data


# --- handlers -------------------------------------------------------------------------------


async def health(state: ServerState, request: Request, body: Body) -> Reply:
    return json_response(200, protocol.health(__version__))


async def ready(state: ServerState, request: Request, body: Body) -> Reply:
    status, text = protocol.ready_status(
        pool_available=state.pool.available, pool_total=state.pool.total,
        shutting_down=state.draining,
    )
    if state.metrics and not state.draining:
        state.metrics.set_pool(state.pool.available, state.pool.waiters)
    return json_response(status, text)


async def models(state: ServerState, request: Request, body: Body) -> Reply:
    if state.metrics:
        state.metrics.set_pool(state.pool.available, state.pool.waiters)
    return json_response(200, protocol.models(
        version=__version__, encoder=state.model.encoder, vocab_size=state.model.vocab_size,
        pool_size=state.pool.total, pool_available=state.pool.available,
        supported_formats=supported_formats(),
    ))


async def transcribe(state: ServerState, request: Request, body: Body) -> Reply:
    if request.method == "OPTIONS":
        return Response(204)
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
    return json_response(200, protocol.transcribe_body(result))


async def transcribe_stream(state: ServerState, request: Request, body: Body) -> Reply:
    if request.method == "OPTIONS":
        return Response(204)
    data = await read_audio_body(state, body)
    if isinstance(data, Response):
        return data
    try:
        samples = await asyncio.to_thread(load_audio, data)  # decode first (server.md §2.7)
    except AudioError as exc:
        log.info("request %s: undecodable audio (%s)", request.request_id, type(exc).__name__)
        return error_response(ErrorCode.INVALID_AUDIO)
    del data
    slot = await checkout(state)
    if isinstance(slot, Response):
        return slot
    chunks = sse.stream(state.executor, state.vocab, samples, slot, state.shutdown)
    return StreamingResponse(200, list(sse.HEADERS), chunks)


async def ws_upgrade(state: ServerState, request: Request, body: Body) -> Reply:
    if state.draining:
        return error_response(ErrorCode.SHUTTING_DOWN)
    return websocket.upgrade(request, websocket.session_settings(state))


async def metrics(state: ServerState, request: Request, body: Body) -> Reply:
    if state.metrics is None:
        return error_response(ErrorCode.METRICS_DISABLED)
    return Response(200, [METRICS_TYPE], state.metrics.render().encode())


ROUTES: dict[str, tuple[tuple[str, ...], RouteHandler]] = {
    "/v1/models": (GET_HEAD, models),
    "/v1/transcribe": (POST_OPTIONS, transcribe),
    "/v1/transcribe/stream": (POST_OPTIONS, transcribe_stream),
    "/v1/ws": (("GET",), ws_upgrade),
    "/metrics": (GET_HEAD, metrics),
}
UNGUARDED: dict[str, RouteHandler] = {"/health": health, "/ready": ready}


# --- the pipeline ---------------------------------------------------------------------------


async def handle(state: ServerState, request: Request, body: Body) -> Reply:
    """server.md §2.1: origin → (health/ready) → rate limit → metrics → method dispatch."""
    path = request.path
    if path in UNGUARDED:
        if request.method not in GET_HEAD:
            return Response(405, [(b"allow", b"GET,HEAD")])
        return await UNGUARDED[path](state, request, body)
    origin = _origin(request)
    decision = state.origin.decide(origin)
    if not decision.allowed:
        log.warning("origin denied: %r on %s", origin, path)
        return error_response(ErrorCode.ORIGIN_DENIED)
    if state.metrics:
        state.metrics.set_pool(state.pool.available)
    if state.limiter is not None:
        ip = client_ip(request.peer, request.headers, trust_private=state.config.trust_proxy)
        if ip is not None and not state.limiter.allow(ip, time.monotonic()):
            log.debug("rate limited %s", ip)
            if state.metrics:
                state.metrics.rate_limited()
            limited = error_response(ErrorCode.RATE_LIMITED, retry_after=RETRY_AFTER_SECS)
            return _with_headers(limited, decision.headers)
    started = time.monotonic()
    route = ROUTES.get(path)
    if route is None:
        reply: Reply = Response(404)
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
