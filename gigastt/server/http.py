"""The HTTP/1.1 connection driver: one coroutine per TCP connection around an ``h11.Connection``.

Owns keep-alive, pipelining, 100-continue, the head and body limits and the slow-client timeouts;
what a request means is decided by the handler (``routes.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import h11

log = logging.getLogger(__name__)

HEAD_LIMIT = 16 * 1024
READ_SIZE = 64 * 1024
MAX_REQUEST_ID = 200

Headers = list[tuple[bytes, bytes]]


class ClientGone(Exception):
    """The peer closed or reset the connection."""


class BodyTooLarge(Exception):
    """The request body exceeds the limit the handler asked for."""


class MalformedBody(Exception):
    """The request body violates HTTP/1.1 framing (e.g. broken chunked encoding)."""


class _Timeout(Exception):
    pass


@dataclass(slots=True)
class Request:
    """A parsed request head. Header names are lowercase bytes, in the order received."""

    method: str
    target: str
    headers: Headers
    peer: str | None
    request_id: str
    http_version: bytes = b"1.1"

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def content_length(self) -> int | None:
        value = self.header(b"content-length")
        return int(value) if value is not None else None


@dataclass(slots=True)
class Response:
    status: int
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    close: bool = False


@dataclass(slots=True)
class StreamingResponse:
    """A response whose body is produced over time (SSE): sent chunked, flushed per chunk."""

    status: int
    headers: Headers
    chunks: AsyncIterator[bytes]


class Upgraded(Protocol):
    """A protocol that takes over the socket after a 101 (the WebSocket session)."""

    async def run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  first_bytes: bytes) -> None: ...


@dataclass(slots=True)
class SwitchProtocols:
    headers: Headers
    protocol: Upgraded


Reply = Response | StreamingResponse | SwitchProtocols


class Body:
    """Lazy access to the request body, with the 100-continue handshake and a size cap."""

    def __init__(self, driver: ConnectionDriver, request: Request) -> None:
        self._driver = driver
        self._request = request

    async def read(self, limit: int) -> bytes:
        """The whole body; ``BodyTooLarge`` as soon as it is known to exceed ``limit`` bytes."""
        declared = self._request.content_length
        if declared is not None and declared > limit:
            raise BodyTooLarge
        return await self._driver.read_body(limit)


Handler = Callable[[Request, Body], Awaitable[Reply]]


@dataclass(frozen=True, slots=True)
class Timeouts:
    header: float = 10.0
    keepalive: float = 75.0
    body: Callable[[], float] = lambda: 300.0


_date_cache: tuple[int, bytes] = (0, b"")


def http_date() -> bytes:
    """The ``date`` header value, formatted once per second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True).encode())
    return _date_cache[1]


def new_request_id() -> str:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then random bits; sortable by time."""
    millis = time.time_ns() // 1_000_000
    value = (millis & ((1 << 48) - 1)) << 80 | int.from_bytes(os.urandom(10), "big")
    value = (value & ~(0xF << 76)) | (0x7 << 76)
    value = (value & ~(0x3 << 62)) | (0x2 << 62)
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def client_request_id(value: bytes | None) -> str | None:
    if value and len(value) <= MAX_REQUEST_ID and all(0x21 <= b <= 0x7E for b in value):
        return value.decode("ascii")
    return None


def plain_response(status: int, body: bytes = b"", *, close: bool = True) -> Response:
    headers: Headers = [(b"content-type", b"text/plain; charset=utf-8")] if body else []
    return Response(status, headers, body, close=close)


def _head_size(event: h11.Request) -> int:
    return len(event.target) + 16 + sum(len(k) + len(v) + 4 for k, v in event.headers)


class ConnectionDriver:
    """Serves HTTP/1.1 requests on one connection until it must close."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 handler: Handler, timeouts: Timeouts) -> None:
        self.reader = reader
        self.writer = writer
        self._handler = handler
        self._timeouts = timeouts
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=HEAD_LIMIT)
        peer = writer.get_extra_info("peername")
        self.peer: str | None = peer[0] if isinstance(peer, tuple) else None
        self._got_bytes = False
        self._eof = False
        self.idle = asyncio.Event()  # set while waiting for the next request (drain closes those)
        self._closing = False
        self._body_done = asyncio.Event()

    def close_when_idle(self) -> None:
        """Ask the connection to close after the response in progress (graceful shutdown)."""
        self._closing = True
        if self.idle.is_set():
            self.writer.close()

    async def run(self) -> None:
        try:
            await self._serve()
        except (ClientGone, ConnectionError, h11.LocalProtocolError):
            pass
        except Exception as exc:  # a bug of ours: log it without client data and drop the socket
            log.error("connection error: %s", type(exc).__name__, exc_info=log.isEnabledFor(10))
        finally:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()

    async def _serve(self) -> None:
        first = True
        while not self._closing:
            try:
                request = await self._next_request(first)
            except _Timeout:
                if self._got_bytes:
                    await self._send_simple(plain_response(408))
                return
            except h11.RemoteProtocolError as exc:
                await self._send_simple(plain_response(exc.error_status_hint))
                return
            if request is None:
                return
            first = False
            self._body_done.clear()
            reply = await self._handle(request)
            if reply is None:
                return
            if isinstance(reply, SwitchProtocols):
                await self._switch(request, reply)
                return
            await self._send(request, reply)
            if not await self._finish_cycle(reply):
                return

    async def _next_request(self, first: bool) -> Request | None:
        """Wait for a complete request head under the header/keep-alive deadlines."""
        self._got_bytes = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self._timeouts.header if first else self._timeouts.keepalive)
        self.idle.set()
        try:
            while True:
                event = self._conn.next_event()
                if isinstance(event, h11.Request):
                    return self._accept_head(event)
                if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    return None
                if not self._got_bytes and self._conn.trailing_data[0]:
                    self._got_bytes = True
                data = await self._read(deadline - loop.time())
                if data and not self._got_bytes:
                    self._got_bytes = True
                    self.idle.clear()
                    deadline = loop.time() + self._timeouts.header
                if self._closing and not self._got_bytes:
                    return None
                self._conn.receive_data(data)
        finally:
            self.idle.clear()

    def _accept_head(self, event: h11.Request) -> Request:
        if _head_size(event) > HEAD_LIMIT:
            raise h11.RemoteProtocolError("request head exceeds limit", error_status_hint=431)
        headers = [(bytes(k), bytes(v)) for k, v in event.headers]
        names = {k for k, _ in headers}
        if b"transfer-encoding" in names and b"content-length" in names:
            # RFC 9112 §6.3: a message with both is a smuggling attempt; never guess the length.
            raise h11.RemoteProtocolError("both Transfer-Encoding and Content-Length")
        if any(any((b < 0x20 and b != 0x09) or b == 0x7F for b in v) for _, v in headers):
            raise h11.RemoteProtocolError("control character in a header value")
        rid = client_request_id(dict(headers).get(b"x-request-id")) or new_request_id()
        return Request(
            method=event.method.decode("ascii"),
            target=event.target.decode("ascii", "replace"),
            headers=headers,
            peer=self.peer,
            request_id=rid,
            http_version=bytes(event.http_version),
        )

    async def _read(self, timeout: float) -> bytes:
        if self._eof:
            return b""
        if timeout <= 0:
            raise _Timeout
        try:
            # asyncio.timeout, not wait_for: no extra task per read on the hot path.
            async with asyncio.timeout(timeout):
                data = await self.reader.read(READ_SIZE)
        except TimeoutError:
            raise _Timeout from None
        except ConnectionError as exc:
            raise ClientGone from exc
        if not data:
            self._eof = True
        return data

    async def read_body(self, limit: int) -> bytes:
        if self._conn.they_are_waiting_for_100_continue:
            await self._write(self._conn.send(h11.InformationalResponse(
                status_code=100, headers=[], reason=b"Continue")))
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError:
                raise MalformedBody from None
            if event is h11.NEED_DATA:
                try:
                    data = await self._read(self._timeouts.body())
                except _Timeout:
                    raise ClientGone("body read timed out") from None
                if not data:
                    raise ClientGone("EOF in body")
                self._conn.receive_data(data)
                continue
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > limit:
                    raise BodyTooLarge
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self._body_done.set()
                return b"".join(chunks)
            else:
                raise ClientGone(f"unexpected {type(event).__name__} in body")

    async def _handle(self, request: Request) -> Reply | None:
        """Run the handler; if the client goes away meanwhile, cancel it (freeing its slot).

        Only requests with a body can start long work (inference); the others are answered
        at once, without the task and the EOF watch.
        """
        if request.method in ("GET", "HEAD", "OPTIONS") and self._conn.their_state is h11.DONE:
            return await self._handler(request, Body(self, request))
        task = asyncio.ensure_future(self._handler(request, Body(self, request)))
        try:
            if self._conn.their_state is not h11.DONE:
                body_done = asyncio.ensure_future(self._body_done.wait())
                await asyncio.wait({task, body_done}, return_when=asyncio.FIRST_COMPLETED)
                body_done.cancel()
            if not task.done() and not self._eof:
                watcher = asyncio.ensure_future(self._watch_eof())
                await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if not watcher.done():
                    watcher.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watcher
            if not task.done() and self._eof:
                return None
            return await task
        except BodyTooLarge:
            return Response(413, close=True)
        except MalformedBody:
            return plain_response(400)
        except ClientGone:
            return None
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def _watch_eof(self) -> None:
        """Read ahead while the handler works: EOF means the client is gone.

        Pipelined bytes are handed to h11 for the next cycle; after them the watch stops, so a
        pipelining client is never buffered without bound.
        """
        try:
            data = await self.reader.read(READ_SIZE)
        except ConnectionError:
            data = b""
        if data:
            self._conn.receive_data(data)
            await asyncio.Event().wait()  # keep running: only EOF or cancellation ends the watch
        self._eof = True

    def _base_headers(self, request: Request | None, headers: Headers) -> Headers:
        rid = request.request_id if request else new_request_id()
        return [*headers, (b"x-request-id", rid.encode()), (b"date", http_date())]

    async def _send(self, request: Request, reply: Response | StreamingResponse) -> None:
        if isinstance(reply, Response):
            await self._send_simple(reply, request)
            return
        head = h11.Response(status_code=reply.status, reason=_reason(reply.status),
                            headers=self._base_headers(request, reply.headers))
        await self._write(self._conn.send(head))
        try:
            async for chunk in reply.chunks:
                if chunk:
                    await self._write(self._conn.send(h11.Data(data=chunk)))
            await self._write(self._conn.send(h11.EndOfMessage()))
        finally:
            aclose = getattr(reply.chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _send_simple(self, reply: Response, request: Request | None = None) -> None:
        if self._conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        headers = self._base_headers(request, reply.headers)
        headers.append((b"content-length", str(len(reply.body)).encode()))
        if reply.close:
            headers.append((b"connection", b"close"))
        data = self._conn.send(h11.Response(status_code=reply.status, headers=headers,
                                            reason=_reason(reply.status)))
        if reply.body and (request is None or request.method != "HEAD"):
            data += self._conn.send(h11.Data(data=reply.body))
        data += self._conn.send(h11.EndOfMessage())
        await self._write(data)

    async def _write(self, data: bytes | None) -> None:
        if not data:
            return
        self.writer.write(data)
        if self.writer.transport.get_write_buffer_size() == 0:
            return  # all written already: no need to wait for the transport
        try:
            async with asyncio.timeout(self._timeouts.body()):
                await self.writer.drain()
        except TimeoutError:
            raise ClientGone("write timed out") from None

    async def _finish_cycle(self, reply: Response | StreamingResponse) -> bool:
        """Prepare for the next pipelined request; False when the connection must close."""
        if isinstance(reply, Response) and reply.close:
            return False
        if self._conn.our_state is h11.MUST_CLOSE or self._closing:
            return False
        # An unread body is skipped only if it is already buffered; otherwise close.
        while self._conn.their_state is h11.SEND_BODY:
            event = self._conn.next_event()
            if event is h11.NEED_DATA:
                return False
        if self._conn.their_state is not h11.DONE or self._conn.our_state is not h11.DONE:
            return False
        self._conn.start_next_cycle()
        return True

    async def _switch(self, request: Request, reply: SwitchProtocols) -> None:
        while self._conn.their_state is h11.SEND_BODY:
            if self._conn.next_event() is h11.NEED_DATA:
                return
        self._conn.next_event()  # consume up to PAUSED so EndOfMessage is not left behind
        headers = self._base_headers(request, reply.headers)
        await self._write(self._conn.send(h11.InformationalResponse(
            status_code=101, headers=headers, reason=b"Switching Protocols")))
        first_bytes, _ = self._conn.trailing_data
        await reply.protocol.run(self.reader, self.writer, bytes(first_bytes))


_REASONS = {
    100: b"Continue", 101: b"Switching Protocols", 200: b"OK", 204: b"No Content",
    400: b"Bad Request", 403: b"Forbidden", 404: b"Not Found", 405: b"Method Not Allowed",
    408: b"Request Timeout", 413: b"Payload Too Large", 422: b"Unprocessable Entity",
    426: b"Upgrade Required", 429: b"Too Many Requests", 431: b"Request Header Fields Too Large",
    500: b"Internal Server Error", 503: b"Service Unavailable",
}


def _reason(status: int) -> bytes:
    return _REASONS.get(status, b"")
