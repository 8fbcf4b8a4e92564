"""The HTTP/1.1 connection driver: one coroutine per TCP connection around an ``h11.Connection``.

Owns keep-alive, pipelining, 100-continue, the head and body limits, the in-flight body budget and
the deadlines on slow or vanished peers; what a request means is decided by the handler
(``routes.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import h11

from gigastt.server.budget import BUSY_RETRY_AFTER_SECS, BodyBudget, Reservation

log = logging.getLogger(__name__)

HEAD_LIMIT = 16 * 1024
READ_SIZE = 64 * 1024
# The lingering close (`ConnectionDriver._linger`): how long and how much of an unwanted body is
# read and dropped so that the answer before it is not reset away.
LINGER_SECS = 2.0
LINGER_BYTES = 8 << 20
MAX_REQUEST_ID = 200

Headers = list[tuple[bytes, bytes]]


class ClientGone(Exception):
    """The peer closed or reset the connection, or stopped taking our bytes."""


class BodyTooLarge(Exception):
    """The request body exceeds the limit the handler asked for."""


class ServerBusy(Exception):
    """The bodies in flight hold the whole in-flight body budget: this one is not read."""


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

    @property
    def has_body(self) -> bool:
        """Whether the head announces a body (h11 has validated the framing headers)."""
        return self.header(b"transfer-encoding") is not None or bool(self.content_length)


@dataclass(slots=True)
class Response:
    status: int
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    close: bool = False


class ChunkStream(Protocol):
    """A body produced over time. The driver always closes it, also when it never iterated it
    (the head could not be sent): closing frees what producing it holds, such as a pool slot."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class StreamingResponse:
    """A response whose body is produced over time (SSE): sent chunked, flushed per chunk."""

    status: int
    headers: Headers
    chunks: ChunkStream


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

    async def read(self, limit: int) -> bytearray:
        """The whole body. Before any of it is read: ``BodyTooLarge`` when its declared length
        exceeds ``limit`` bytes, ``ServerBusy`` when the in-flight body budget cannot hold it (an
        ``Expect: 100-continue`` client then gets no ``100``). ``BodyTooLarge`` also as soon as a
        chunked body passes ``limit``."""
        return await self._driver.read_body(self._request, limit)


Handler = Callable[[Request, Body], Awaitable[Reply]]


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Deadlines in seconds. ``idle`` (read at each use, so a reload applies at once) bounds each
    body read and each write that the peer does not take; 0 means no deadline (docs/api.md).
    ``close`` bounds the flush of the last bytes when the connection closes."""

    header: float = 10.0
    keepalive: float = 75.0
    idle: Callable[[], float] = lambda: 300.0
    close: float = 5.0


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


_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,%d}" % MAX_REQUEST_ID)
# Controls other than HTAB, which h11's field-value grammar lets through (only NUL is refused).
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def client_request_id(value: bytes | None) -> str | None:
    if value is not None and _REQUEST_ID.fullmatch(value):
        return value.decode("ascii")
    return None


def plain_response(status: int, body: bytes = b"", *, close: bool = True) -> Response:
    headers: Headers = [(b"content-type", b"text/plain; charset=utf-8")] if body else []
    return Response(status, headers, body, close=close)


class ConnectionDriver:
    """Serves HTTP/1.1 requests on one connection until it must close."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 handler: Handler, timeouts: Timeouts, budget: BodyBudget) -> None:
        self.reader = reader
        self.writer = writer
        self._handler = handler
        self._timeouts = timeouts
        self._budget = budget
        self._reservation: Reservation | None = None  # held until the handler is done
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=HEAD_LIMIT)
        peer = writer.get_extra_info("peername")
        self.peer: str | None = peer[0] if isinstance(peer, tuple) else None
        self._got_bytes = False
        self._eof = False
        self.idle = asyncio.Event()  # set while waiting for the next request (drain closes those)
        self._closing = False
        self._served = False  # a request has been received on this connection
        self._body_done = asyncio.Event()

    def close_when_idle(self) -> None:
        """Ask the connection to close after the response in progress (graceful shutdown).

        One that waits for a further request closes now. One that has not had its first request
        yet still gets it (the server accepted the connection), under the header deadline.
        """
        self._closing = True
        if self.idle.is_set() and self._served:
            self.writer.close()

    async def run(self) -> None:
        try:
            await self._serve()
        except (ClientGone, ConnectionError, h11.LocalProtocolError):
            pass
        except Exception as exc:  # a bug of ours: log it without client data and drop the socket
            log.error("connection error: %s", type(exc).__name__, exc_info=log.isEnabledFor(10))
        finally:
            self._release_body()
            await self._close()

    async def _close(self) -> None:
        """Close the socket, cutting it off (abort) if the peer has not taken the last bytes
        within the close deadline: otherwise it could hold the connection open for ever."""
        if self._conn.their_state is h11.SEND_BODY and not self._eof:
            await self._linger()
        self.writer.close()
        closed = False
        try:
            async with asyncio.timeout(self._timeouts.close):
                await self.writer.wait_closed()
            closed = True
        except Exception:  # the deadline, or the error that the connection died of
            pass
        finally:
            if not closed:
                self.writer.transport.abort()

    async def _linger(self) -> None:
        """Answered before its body was read (401, 403, 413, 503…), the client may still be
        sending it; closing now would make the kernel answer those bytes with a reset, which can
        destroy our response before the client reads it. So: send FIN after the response, then
        read and drop what still comes, for at most ``LINGER_SECS`` and ``LINGER_BYTES``."""
        if not self.writer.can_write_eof():
            return
        with contextlib.suppress(Exception):
            self.writer.write_eof()
            dropped = 0
            async with asyncio.timeout(LINGER_SECS):
                while dropped < LINGER_BYTES:
                    data = await self.reader.read(READ_SIZE)
                    if not data:
                        return
                    dropped += len(data)

    async def _serve(self) -> None:
        buffered = False  # bytes of the next request are already in h11's buffer
        while not (self._closing and self._served):
            try:
                request = await self._next_request(not self._served, buffered)
            except _Timeout:
                if self._got_bytes:
                    await self._send_simple(plain_response(408))
                return
            except h11.RemoteProtocolError as exc:
                await self._send_simple(plain_response(exc.error_status_hint))
                return
            if request is None:
                return
            self._served = True
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
            pending, closed = self._conn.trailing_data
            buffered = bool(pending) or closed
            if pending:
                # The next request is already buffered (pipelining), so nothing above had to
                # wait: give other connections a turn, or one burst would hold the loop for
                # seconds (docs/architecture.md §5).
                await asyncio.sleep(0)

    async def _next_request(self, first: bool, buffered: bool) -> Request | None:
        """Wait for a complete request head under the header/keep-alive deadlines.

        ``buffered`` False: h11's buffer is empty and open, so it could only say NEED_DATA; its
        parse of an empty buffer is skipped (the common keep-alive case).
        """
        self._got_bytes = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self._timeouts.header if first else self._timeouts.keepalive)
        self.idle.set()
        try:
            while True:
                if buffered:
                    event = self._conn.next_event()
                    if isinstance(event, h11.Request):
                        return self._accept_head(event)
                    if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                        return None
                    if not self._got_bytes and self._conn.trailing_data[0]:
                        self._got_bytes = True
                buffered = True
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
        # One pass over the headers (h11 hands them over as bytes, names lowercased): this runs
        # for every request, so no per-byte loops in Python.
        headers: Headers = list(event.headers)
        size = len(event.target) + 16
        framing = 0
        control = False
        client_rid = None
        for name, value in headers:
            size += len(name) + len(value) + 4
            if _CONTROL.search(value) is not None:
                control = True
            if name == b"content-length":
                framing |= 1
            elif name == b"transfer-encoding":
                framing |= 2
            elif name == b"x-request-id":
                client_rid = value  # the last one, if repeated
        if size > HEAD_LIMIT:
            raise h11.RemoteProtocolError("request head exceeds limit", error_status_hint=431)
        if framing == 3:
            # RFC 9112 §6.3: a message with both is a smuggling attempt; never guess the length.
            raise h11.RemoteProtocolError("both Transfer-Encoding and Content-Length")
        if control:
            raise h11.RemoteProtocolError("control character in a header value")
        return Request(
            method=event.method.decode("ascii"),
            target=event.target.decode("ascii", "replace"),
            headers=headers,
            peer=self.peer,
            request_id=client_request_id(client_rid) or new_request_id(),
            http_version=event.http_version,
        )

    def _idle(self) -> float | None:
        """The idle timeout as a deadline: 0 (docs/api.md: no timeout) is None."""
        return self._timeouts.idle() or None

    async def _read(self, timeout: float | None) -> bytes:
        if self._eof:
            return b""
        if timeout is not None and timeout <= 0:
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

    async def read_body(self, request: Request, limit: int) -> bytearray:
        if self._conn.their_state is not h11.SEND_BODY:
            return bytearray()  # no body: its EndOfMessage was taken before the handler ran
        declared = request.content_length
        if declared is not None and declared > limit:
            raise BodyTooLarge
        # The declared length is reserved before a byte is read; a chunked body starts with one
        # read's worth and grows its reservation as it arrives (docs/runbook.md, body budget).
        reservation = self._budget.reserve(min(READ_SIZE, limit) if declared is None else declared)
        if reservation is None:
            raise ServerBusy
        self._reservation = reservation
        if self._conn.they_are_waiting_for_100_continue:
            await self._write(self._conn.send(h11.InformationalResponse(
                status_code=100, headers=[], reason=b"Continue")))
        # One buffer, filled in place: a body of hours of audio is held once, never as its
        # pieces and their join side by side (D30).
        body = bytearray()
        size = 0
        while True:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError:
                raise MalformedBody from None
            if event is h11.NEED_DATA:
                try:
                    data = await self._read(self._idle())
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
                if size > reservation.size and not reservation.grow(size - reservation.size):
                    raise ServerBusy
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                self._body_done.set()
                return body
            else:
                raise ClientGone(f"unexpected {type(event).__name__} in body")

    def _release_body(self) -> None:
        if self._reservation is not None:
            self._reservation.release()
            self._reservation = None

    async def _handle(self, request: Request) -> Reply | None:
        """Run the handler; if the client goes away meanwhile, cancel it (freeing its slot).

        Only requests with a body can start long work (inference); the others are answered
        in this task, without the handler task and the EOF watch.
        """
        if not request.has_body:
            self._conn.next_event()  # its EndOfMessage: h11 reports it only when asked
            return await self._handler(request, Body(self, request))
        task = asyncio.ensure_future(self._handler(request, Body(self, request)))
        try:
            if self._conn.their_state is h11.SEND_BODY:
                body_done = asyncio.ensure_future(self._body_done.wait())
                await asyncio.wait({task, body_done}, return_when=asyncio.FIRST_COMPLETED)
                body_done.cancel()
            if not task.done() and not self._eof:
                watcher = asyncio.ensure_future(self._watch_gone())
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
        except ServerBusy:
            return Response(503, [(b"retry-after", str(BUSY_RETRY_AFTER_SECS).encode())],
                            close=True)
        except MalformedBody:
            return plain_response(400)
        except ClientGone:
            return None
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    late = await task  # finished after all: a stream it opened is closed
                    if isinstance(late, StreamingResponse):
                        await late.chunks.aclose()
            self._release_body()

    async def _watch_gone(self) -> None:
        """Read ahead while a reply is made or streamed: EOF or a reset means the client is gone.

        Pipelined bytes are handed to h11 for the next cycle; after them only the loss of the
        connection ends the watch, so a pipelining client is never buffered without bound.
        """
        if len(self._conn.trailing_data[0]) < READ_SIZE:  # at most one read ahead per reply
            try:
                data = await self.reader.read(READ_SIZE)
            except ConnectionError:
                data = b""
            if not data:
                self._eof = True
                return
            self._conn.receive_data(data)
        with contextlib.suppress(Exception):
            # Shielded: cancelling this watch must not cancel the transport's own future.
            await asyncio.shield(self.writer.wait_closed())
        self._eof = True

    def _base_headers(self, request: Request | None, headers: Headers) -> Headers:
        rid = request.request_id if request else new_request_id()
        return [*headers, (b"x-request-id", rid.encode()), (b"date", http_date())]

    async def _send(self, request: Request, reply: Response | StreamingResponse) -> None:
        if isinstance(reply, Response):
            await self._send_simple(reply, request)
            return
        try:
            headers = self._base_headers(request, reply.headers)
            if self._closing:  # the drain has begun: this is the connection's last response
                headers.append((b"connection", b"close"))
            head = h11.Response(status_code=reply.status, reason=_reason(reply.status),
                                headers=headers)
            await self._write(self._conn.send(head))
            await self._stream(reply.chunks)
        finally:
            await reply.chunks.aclose()

    async def _stream(self, chunks: ChunkStream) -> None:
        """Send the chunks as they come; ClientGone as soon as the client is gone, without
        waiting for the next chunk (which may be many seconds away)."""
        pump = asyncio.ensure_future(self._pump(chunks))
        watch = asyncio.ensure_future(self._watch_gone())
        try:
            await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, watch):
                task.cancel()
            await asyncio.wait({pump, watch})
        if pump.cancelled():
            raise ClientGone("client gone during a stream")
        pump.result()  # an error of a write (ClientGone, ConnectionError) surfaces here

    async def _pump(self, chunks: ChunkStream) -> None:
        async for chunk in chunks:
            if chunk:
                await self._write(self._conn.send(h11.Data(data=chunk)))
        await self._write(self._conn.send(h11.EndOfMessage()))

    async def _send_simple(self, reply: Response, request: Request | None = None) -> None:
        if self._conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        headers = self._base_headers(request, reply.headers)
        headers.append((b"content-length", str(len(reply.body)).encode()))
        # An answer that leaves the request body unread ends the connection (the driver cannot
        # know where the next request starts): say so, whichever handler answered (D9, D35).
        if reply.close or self._closing or self._conn.their_state is h11.SEND_BODY:
            headers.append((b"connection", b"close"))
        data = self._conn.send(h11.Response(status_code=reply.status, headers=headers,
                                            reason=_reason(reply.status)))
        if reply.body and (request is None or request.method != "HEAD"):
            data += self._conn.send(h11.Data(data=reply.body))
        data += self._conn.send(h11.EndOfMessage())
        await self._write(data)

    async def _write(self, data: bytes | None) -> None:
        """Send bytes. ClientGone when the connection is lost, or when the peer has not taken
        them within the idle timeout (the transport is then aborted: a close would wait for the
        unsent bytes, and the connection would stay open for ever)."""
        if not data:
            return
        transport = self.writer.transport
        if transport.is_closing():
            raise ClientGone("connection lost")  # writing on would only log socket.send() errors
        self.writer.write(data)
        if transport.get_write_buffer_size() == 0:
            return  # all written already: no need to wait for the transport
        try:
            async with asyncio.timeout(self._idle()):
                await self.writer.drain()
        except TimeoutError:
            transport.abort()
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
        if self._conn.their_state is h11.SEND_BODY:
            return  # upgrade() refuses requests with a body; never switch with one unread
        self._conn.next_event()  # consume up to PAUSED so EndOfMessage is not left behind
        headers = self._base_headers(request, reply.headers)
        await self._write(self._conn.send(h11.InformationalResponse(
            status_code=101, headers=headers, reason=b"Switching Protocols")))
        first_bytes, _ = self._conn.trailing_data
        await reply.protocol.run(self.reader, self.writer, bytes(first_bytes))


_REASONS = {
    100: b"Continue", 101: b"Switching Protocols", 200: b"OK", 204: b"No Content",
    400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found",
    405: b"Method Not Allowed", 408: b"Request Timeout", 413: b"Payload Too Large",
    415: b"Unsupported Media Type", 422: b"Unprocessable Entity",
    426: b"Upgrade Required", 429: b"Too Many Requests", 431: b"Request Header Fields Too Large",
    500: b"Internal Server Error", 503: b"Service Unavailable",
}


def _reason(status: int) -> bytes:
    return _REASONS.get(status, b"")
