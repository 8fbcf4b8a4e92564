"""Soak: one ``gigastt serve`` under a realistic mix plus abusive clients for ``--minutes``.

    python bench/soak.py [--minutes M] [--model small|medium|full] [--int8] [--json OUT]
                         [--streams N] [--rest N] [--sse N] [--health N] [--abusers N] ...

The server is started with ``--config`` pointing at a small file the harness writes (and rewrites
before each SIGHUP). Against it, until the time is up: live WebSocket streams in real time
(speech-like audio, 100 ms frames, ``stop``, reconnect), REST and SSE uploads of a few seconds,
``/health`` pollers in a separate process, and abusive clients, each looping: a non-reading
pipeliner, slowloris, RST halfway through an upload, oversize bodies, absurd WAV headers and
JSON garbage on a WebSocket; a SIGHUP every ``--sighup-every`` seconds. Every client has
timeouts; failures are counted, never raised. Only the server this harness started is targeted.

Reported: requests and sessions by kind and outcome (and whether every admitted one, i.e. not
a 503/429 rejection, got a complete answer), server RSS at start (after a warm-up), peak
(VmHWM) and end (after the load stops and a settle), open file descriptors at start and end,
``/health`` p50/p99, and the server log lines with "Traceback" or "error". Exit status 1 when an
admitted request went unanswered, the FDs did not come back, RSS end > 1.10 x start, the server
died, or inference slots stayed taken. A benchmark-style harness, not a test.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import random
import re
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common
import h11

from gigastt.config import is_loopback_host

FRAME_S = 0.1
WS_RATE = 48_000
UPLOAD_RATE = 16_000
HEADER_TIMEOUT_S = 10.0  # the server's --header-timeout-secs default (not reloadable)
IDLE_TIMEOUTS = (10, 15)  # idle_timeout_secs in the config file, swapped at every SIGHUP
BODY_LIMIT = 1 << 20  # body_limit_bytes in the config file
REQUEST_TIMEOUT_S = 120.0  # one HTTP exchange, connect to last byte
WS_READY_TIMEOUT_S = 60.0  # the checkout wait (30 s) and then some
WS_FINAL_TIMEOUT_S = 120.0  # stop -> final and close
MAX_ITERATIONS = 100_000  # per client loop: a bound besides the deadline
REJECTED = ("503", "429", "upgrade 503", "upgrade 429", "error timeout, close 1013")
# "Traceback", the word "error" in any case (an ERROR level too), not "...Error" class names
LOG_FINDING = re.compile(r"Traceback|\berror\b", re.IGNORECASE)

# What docs/api.md says each client gets (rejections, REJECTED, are fine for every kind).
EXPECTED: dict[str, tuple[str, ...]] = {
    "ws stream": ("final, close 1000",),
    "POST /v1/transcribe": ("200",),
    "POST /v1/transcribe/stream": ("200",),
    "GET /health": ("200",),
    "non-reader": ("closed by server", "reset by server"),
    "slowloris": ("408",),
    "RST mid-upload": ("reset sent",),
    "oversize body (declared)": ("413",),
    "oversize body (100-continue)": ("413",),
    "oversize body (chunked)": ("413",),
    "absurd WAV": ("422",),
    "WS JSON garbage": ("final, close 1000",),
}


# ----------------------------------------------------------------------------------------------
# tally


@dataclass
class Row:
    count: int = 0
    seconds: list[float] = field(default_factory=list)
    admitted: bool | None = None  # None: a client that expects no answer (not checked)
    answered: bool | None = None


class Tally:
    """Outcomes by (kind, outcome); an admitted request without a complete answer is lost."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], Row] = {}

    def add(self, kind: str, outcome: str, seconds: float, *, admitted: bool | None,
            answered: bool | None) -> None:
        row = self.rows.setdefault((kind, outcome), Row(admitted=admitted, answered=answered))
        row.count += 1
        row.seconds.append(seconds)
        # a label means one thing; if it ever did not, the worse reading wins
        if admitted and not answered:
            row.admitted, row.answered = True, False

    @property
    def admitted(self) -> int:
        return sum(r.count for r in self.rows.values() if r.admitted)

    @property
    def lost(self) -> int:
        return sum(r.count for r in self.rows.values() if r.admitted and not r.answered)

    def unexpected(self) -> list[tuple[str, str, int]]:
        return [(k, o, r.count) for (k, o), r in sorted(self.rows.items())
                if o not in EXPECTED.get(k, ()) and o not in REJECTED]

    def as_json(self) -> list[dict[str, Any]]:
        return [{"kind": k, "outcome": o, "count": r.count, "admitted": r.admitted,
                 "answered": r.answered, "p50_s": common.median(r.seconds),
                 "max_s": max(r.seconds, default=None)}
                for (k, o), r in sorted(self.rows.items())]


# ----------------------------------------------------------------------------------------------
# the run's shared state


@dataclass
class Ctx:
    host: str
    port: int
    tally: Tally
    deadline: float  # loop.time() after which no client starts another iteration
    stream_pcm: list[bytes]  # 48 kHz PCM16 for the live streams
    garbage_pcm: bytes  # 2 s for the WS garbage sessions
    uploads: list[bytes]  # WAV files for REST, SSE and RST
    abuse_gap: float
    upload_gap: float
    slowloris_byte_s: float
    nonreader_hold: float

    def running(self) -> bool:
        return asyncio.get_running_loop().time() < self.deadline


async def loop_client(ctx: Ctx, step: Callable[[int], Awaitable[None]], gap: float) -> None:
    """Run ``step(i)`` until the deadline (bounded in count); a step never raises out of here."""
    for i in range(MAX_ITERATIONS):
        if not ctx.running():
            return
        started = time.perf_counter()
        try:
            await step(i)
        except Exception as exc:  # a harness bug must not stop the soak: count it
            ctx.tally.add("harness", f"bug: {type(exc).__name__}: {exc}", 0.0,
                          admitted=None, answered=None)
        # an attempt that failed at once (server gone) must not turn into a busy loop
        pause = max(gap, 0.5 if time.perf_counter() - started < 0.2 else 0.0)
        if pause and ctx.running():
            await asyncio.sleep(pause)


def _error_name(exc: BaseException) -> str:
    return "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__


# ----------------------------------------------------------------------------------------------
# HTTP clients (h11, the server's own parser, in the client role)


@dataclass
class HttpResult:
    status: int | None = None
    body: bytes = b""
    complete: bool = False
    connected: bool = False
    error: str | None = None

    def outcome(self) -> tuple[str, bool, bool]:
        """(label, admitted, answered)."""
        if not self.connected:
            return f"connect error: {self.error}", False, False
        if self.status is None:
            return f"no response: {self.error or 'closed'}", True, False
        label = str(self.status)
        if not self.complete:
            label += f", incomplete: {self.error or 'closed'}"
        return label, label not in REJECTED, self.complete


Write = Callable[[bytes], Awaitable[None]]
Sender = Callable[[Write, h11.Connection], Awaitable[None]]


async def http_call(ctx: Ctx, method: str, target: str, headers: Sequence[tuple[str, str]],
                    send_body: Sender, timeout: float = REQUEST_TIMEOUT_S) -> HttpResult:
    """One request on a fresh connection; the body is sent while the response is read.

    A raw socket, not asyncio streams: a failed write (the server answered early, 413, and
    closed) must not stop the reading of the answer that is already there.
    """
    loop = asyncio.get_running_loop()
    conn = h11.Connection(h11.CLIENT)
    result = HttpResult()
    sock: socket.socket | None = None
    sender: asyncio.Future[None] | None = None
    try:
        async with asyncio.timeout(timeout):
            sock = await raw_connect(ctx)
            result.connected = True

            async def write(data: bytes) -> None:
                assert sock is not None
                await loop.sock_sendall(sock, data)

            async def send() -> None:
                try:
                    await write(conn.send(h11.Request(method=method, target=target,
                                                      headers=[("host", "soak"), *headers])))
                    await send_body(write, conn)
                except (OSError, h11.LocalProtocolError):
                    pass  # the answer, if any, is what counts

            sender = asyncio.ensure_future(send())
            body = bytearray()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await loop.sock_recv(sock, 65536))
                elif isinstance(event, h11.Response):
                    result.status = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    result.complete = True
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    break
            result.body = bytes(body)
    except TimeoutError:
        result.error = "timeout"
    except h11.RemoteProtocolError:
        result.error = "closed mid-response"
    except OSError as exc:
        result.error = type(exc).__name__
    finally:
        if sender is not None and not sender.done():
            sender.cancel()
            await asyncio.wait({sender})
        if sock is not None:
            sock.close()
    return result


def _fixed_body(data: bytes) -> Sender:
    async def send(write: Write, conn: h11.Connection) -> None:
        await write(conn.send(h11.Data(data=data)) + conn.send(h11.EndOfMessage()))
    return send


async def upload(ctx: Ctx, kind: str, target: str, wav: bytes) -> None:
    started = time.perf_counter()
    result = await http_call(ctx, "POST", target,
                             [("content-type", "audio/wav"), ("content-length", str(len(wav)))],
                             _fixed_body(wav))
    label, admitted, answered = result.outcome()
    if result.complete and b'"type":"error"' in result.body:
        label += " with an error event"
    ctx.tally.add(kind, label, time.perf_counter() - started, admitted=admitted,
                  answered=answered)


# ----------------------------------------------------------------------------------------------
# WebSocket sessions


async def ws_session(ctx: Ctx, kind: str, pcm: bytes, texts: Sequence[str] = ()) -> None:
    """Connect, wait for ready, send ``texts``, the audio in real time and ``stop``; tally it."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    started = time.perf_counter()
    url = f"ws://{ctx.host}:{ctx.port}/v1/ws"
    frame_bytes = int(WS_RATE * FRAME_S) * 2
    stop_sent = False
    last_type = ""  # the server's answer to stop is a final, the session's last message
    try:
        ws = await connect(url, open_timeout=30, close_timeout=10, ping_interval=None,
                           max_size=None, compression=None)
    except InvalidStatus as exc:
        code = exc.response.status_code
        label = f"upgrade {code}"
        ctx.tally.add(kind, label, time.perf_counter() - started,
                      admitted=label not in REJECTED, answered=True)
        return
    except OSError as exc:
        ctx.tally.add(kind, f"connect error: {type(exc).__name__}",
                      time.perf_counter() - started, admitted=False, answered=False)
        return
    except Exception as exc:  # handshake broken, timed out: after the TCP connect
        ctx.tally.add(kind, f"upgrade failed: {_error_name(exc)}", time.perf_counter() - started,
                      admitted=True, answered=False)
        return
    error: str | None = None
    try:
        async with ws:
            first = json.loads(await asyncio.wait_for(ws.recv(), WS_READY_TIMEOUT_S))
            if first.get("type") != "ready":
                with_close = ""
                try:
                    await asyncio.wait_for(ws.wait_closed(), 10)
                    with_close = f", close {ws.close_code}"
                except TimeoutError:
                    pass
                label = f"error {first.get('code')}{with_close}"
                ctx.tally.add(kind, label, time.perf_counter() - started,
                              admitted=label not in REJECTED, answered=True)
                return

            async def receive() -> None:
                nonlocal last_type
                try:
                    async for message in ws:
                        last_type = str(json.loads(message).get("type"))
                except ConnectionClosed:
                    pass

            receiver = asyncio.ensure_future(receive())
            try:
                await ws.send(json.dumps({"type": "configure", "sample_rate": WS_RATE}))
                for text in texts:
                    await asyncio.wait_for(ws.send(text), 30)
                t0 = time.perf_counter()
                for k, offset in enumerate(range(0, len(pcm), frame_bytes)):
                    delay = t0 + (k + 1) * FRAME_S - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    await asyncio.wait_for(ws.send(pcm[offset : offset + frame_bytes]), 30)
                stop_sent = True
                await ws.send(json.dumps({"type": "stop"}))
                await asyncio.wait_for(asyncio.shield(receiver), WS_FINAL_TIMEOUT_S)
            finally:
                receiver.cancel()
    except Exception as exc:
        error = _error_name(exc)
    final_after_stop = stop_sent and last_type == "final"
    label = ("final" if final_after_stop else "no final") + f", close {ws.close_code}"
    if error is not None:
        label += f", {error}" + ("" if stop_sent else " before stop")
    ctx.tally.add(kind, label, time.perf_counter() - started, admitted=True,
                  answered=final_after_stop)


def garbage_texts(rng: random.Random) -> list[str]:
    """Text messages that docs/api.md says are ignored (no valid stop, no valid configure)."""
    printable = "".join(chr(c) for c in range(32, 127)) + "ёжик\u00a0\u2028\ufeff"
    depth = rng.randrange(1_000, 200_000)
    return [
        "".join(rng.choice(printable) for _ in range(rng.randrange(1, 2000))),
        "[" * depth,
        '{"a":' * (depth // 5) + "1" + "}" * (depth // 5),
        "[" * 5000 + "]" * 5000,
        '{"type":"configure","sample_rate":' + "9" * 5000 + "}",
        '{"type":"configure","sample_rate":"fast"}',
        '{"type":"configure","sample_rate":1e309}',
        '{"type":"configure","sample_rate":NaN}',
        '{"type":"configure","sample_rate":-1}',
        '{"type":"configure","sample_rate":12345}',
        '{"type":["stop"]}',
        '{"type":"stop"',
        '{"type":null}',
        '"\\ud800\\udfff\\ud800"',
        "null",
        "",
        json.dumps({"type": "x" * 100_000}),
    ]


async def ws_garbage(ctx: Ctx, i: int) -> None:
    await ws_session(ctx, "WS JSON garbage", ctx.garbage_pcm, garbage_texts(random.Random(i)))


# ----------------------------------------------------------------------------------------------
# raw-socket abusers


async def raw_connect(ctx: Ctx, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (ctx.host, ctx.port)),
                               10)
    except BaseException:
        sock.close()
        raise
    return sock


def tcp_state(sock: socket.socket) -> str:
    """The socket's TCP state without reading from it (Linux ``TCP_INFO``)."""
    state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
    return {1: "open after hold", 7: "reset by server", 8: "closed by server"}.get(
        state, f"tcp state {state}")


async def non_reader(ctx: Ctx, i: int) -> None:
    """Pipelines GETs and never reads: the server's writes must time out and close it.

    20 000 ``/v1/models`` answers are ~9 MB, more than the kernel buffers on both ends hold
    (4 MiB send buffer at most), so the server is stuck writing well before the hold ends.
    """
    kind = "non-reader"
    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    try:
        sock = await raw_connect(ctx, rcvbuf=4096)
    except Exception as exc:
        ctx.tally.add(kind, f"connect error: {_error_name(exc)}", 0.0, admitted=None,
                      answered=None)
        return
    batch = b"GET /v1/models HTTP/1.1\r\nHost: soak\r\n\r\n" * 100
    try:
        for _ in range(200):
            try:
                await asyncio.wait_for(loop.sock_sendall(sock, batch), 2.0)
            except TimeoutError:
                break  # the server stopped reading too
        await asyncio.sleep(max(0.0, ctx.nonreader_hold - (time.perf_counter() - started)))
        label = tcp_state(sock)
    except OSError as exc:
        label = f"send failed: {type(exc).__name__}"
    finally:
        sock.close()
    ctx.tally.add(kind, label, time.perf_counter() - started, admitted=None, answered=None)


async def _read_all(sock: socket.socket, into: bytearray) -> str:
    """Read until EOF; how it ended."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            chunk = await loop.sock_recv(sock, 65536)
        except OSError as exc:
            return type(exc).__name__
        if not chunk:
            return "eof"
        into += chunk


def _status_of(data: bytes) -> str | None:
    match = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return match.group(1).decode() if match else None


async def slowloris(ctx: Ctx, i: int) -> None:
    """Sends a request head one byte at a time, slower than the header deadline allows."""
    kind = "slowloris"
    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    n = int(2.5 * HEADER_TIMEOUT_S / ctx.slowloris_byte_s)
    head = f"GET /health HTTP/1.1\r\nHost: soak\r\nX-Pad: {'a' * max(1, n - 50)}\r\n\r\n".encode()
    try:
        sock = await raw_connect(ctx)
    except Exception as exc:
        ctx.tally.add(kind, f"connect error: {_error_name(exc)}", 0.0, admitted=None,
                      answered=None)
        return
    received = bytearray()
    reader = asyncio.ensure_future(_read_all(sock, received))
    try:
        for byte in head:
            if reader.done():
                break
            await asyncio.wait_for(loop.sock_sendall(sock, bytes([byte])), 5)
            await asyncio.sleep(ctx.slowloris_byte_s)
        ended = await asyncio.wait_for(asyncio.shield(reader), 15)
        status = _status_of(bytes(received))
        label = status if status else f"no response ({ended})"
    except TimeoutError:
        label = "no response in time"
    except OSError as exc:
        status = _status_of(bytes(received))
        label = status if status else f"send failed: {type(exc).__name__}"
    finally:
        reader.cancel()
        sock.close()
    ctx.tally.add(kind, label, time.perf_counter() - started, admitted=None, answered=None)


async def rst_upload(ctx: Ctx, i: int) -> None:
    """Half of an upload, then an RST (SO_LINGER 0): the server must free everything."""
    kind = "RST mid-upload"
    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    wav = ctx.uploads[i % len(ctx.uploads)]
    target = "/v1/transcribe" if i % 2 == 0 else "/v1/transcribe/stream"
    head = (f"POST {target} HTTP/1.1\r\nHost: soak\r\nContent-Type: audio/wav\r\n"
            f"Content-Length: {len(wav)}\r\n\r\n").encode()
    try:
        sock = await raw_connect(ctx)
    except Exception as exc:
        ctx.tally.add(kind, f"connect error: {_error_name(exc)}", 0.0, admitted=None,
                      answered=None)
        return
    try:
        await asyncio.wait_for(loop.sock_sendall(sock, head + wav[: len(wav) // 2]), 10)
        await asyncio.sleep(0.2)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        label = "reset sent"
    except (OSError, TimeoutError) as exc:
        label = f"send failed: {_error_name(exc)}"
    finally:
        sock.close()
    ctx.tally.add(kind, label, time.perf_counter() - started, admitted=None, answered=None)


async def oversize(ctx: Ctx, i: int) -> None:
    """Bodies over the limit: declared (plain and 100-continue) or chunked; 413 expected."""
    started = time.perf_counter()
    target = "/v1/transcribe" if i % 2 == 0 else "/v1/transcribe/stream"
    variant = i % 3
    kind = f"oversize body ({('declared', '100-continue', 'chunked')[variant]})"
    if variant == 2:
        chunk = b"\0" * 65536

        async def chunked(write: Write, conn: h11.Connection) -> None:
            for _ in range(BODY_LIMIT // len(chunk) + 2):
                await write(conn.send(h11.Data(data=chunk)))
            await write(conn.send(h11.EndOfMessage()))

        headers = [("transfer-encoding", "chunked")]
        result = await http_call(ctx, "POST", target, headers, chunked)
    else:
        headers = [("content-length", str(BODY_LIMIT + 1))]
        if variant == 1:
            headers.append(("expect", "100-continue"))

        async def nothing(write: Write, conn: h11.Connection) -> None:
            return None

        result = await http_call(ctx, "POST", target, headers, nothing)
    label, admitted, answered = result.outcome()
    ctx.tally.add(kind, label, time.perf_counter() - started, admitted=admitted,
                  answered=answered)


async def absurd(ctx: Ctx, i: int) -> None:
    from gigastt.testing.audio import tiny_wav

    target = "/v1/transcribe" if i % 2 == 0 else "/v1/transcribe/stream"
    rate = 400_000_000 if (i // 2) % 2 == 0 else 0xFFFFFFFB
    started = time.perf_counter()
    wav = tiny_wav(rate)
    result = await http_call(ctx, "POST", target,
                             [("content-type", "audio/wav"), ("content-length", str(len(wav)))],
                             _fixed_body(wav))
    label, admitted, answered = result.outcome()
    ctx.tally.add("absurd WAV", label, time.perf_counter() - started, admitted=admitted,
                  answered=answered)


# ----------------------------------------------------------------------------------------------
# the mix


@dataclass
class MixSize:
    streams: int
    rest: int
    sse: int
    abusers: int


def client_tasks(ctx: Ctx, size: MixSize) -> list[Awaitable[None]]:
    tasks: list[Awaitable[None]] = []
    for s in range(size.streams):
        async def stream(i: int, s: int = s) -> None:
            await ws_session(ctx, "ws stream", ctx.stream_pcm[(s + i) % len(ctx.stream_pcm)])
        tasks.append(loop_client(ctx, stream, 0.0))
    for kind, target, n in (("POST /v1/transcribe", "/v1/transcribe", size.rest),
                            ("POST /v1/transcribe/stream", "/v1/transcribe/stream", size.sse)):
        for s in range(n):
            async def post(i: int, s: int = s, kind: str = kind, target: str = target) -> None:
                await upload(ctx, kind, target, ctx.uploads[(s + i) % len(ctx.uploads)])
            tasks.append(loop_client(ctx, post, ctx.upload_gap))
    for _ in range(size.abusers):
        for step in (non_reader, slowloris, rst_upload, oversize, absurd, ws_garbage):
            tasks.append(loop_client(ctx, functools.partial(step, ctx), ctx.abuse_gap))
    return tasks


async def run_mix(ctx: Ctx, size: MixSize, extra: Sequence[Awaitable[None]] = ()) -> None:
    """All clients until the deadline; what is still running well after it is cancelled."""
    loop = asyncio.get_running_loop()
    pending = [asyncio.ensure_future(t) for t in [*client_tasks(ctx, size), *extra]]
    grace = WS_READY_TIMEOUT_S + WS_FINAL_TIMEOUT_S + ctx.nonreader_hold + 60
    _, left = await asyncio.wait(pending, timeout=ctx.deadline - loop.time() + grace)
    for task in left:
        task.cancel()
        ctx.tally.add("harness", "client cancelled after the grace period", 0.0,
                      admitted=None, answered=None)
    if left:
        await asyncio.wait(left, timeout=10)


async def sighups(ctx: Ctx, pid: int, config: Path, every: float, sent: list[float]) -> None:
    """Rewrite the config file and send SIGHUP, first after half a period, then every period."""
    loop = asyncio.get_running_loop()
    due = loop.time() + every / 2
    while due < ctx.deadline:
        await asyncio.sleep(max(0.0, due - loop.time()))
        write_config(config, IDLE_TIMEOUTS[(len(sent) + 1) % len(IDLE_TIMEOUTS)])
        os.kill(pid, signal.SIGHUP)
        sent.append(loop.time())
        due += every


def write_config(path: Path, idle: int) -> None:
    path.write_text(f"idle_timeout_secs = {idle}\nbody_limit_bytes = {BODY_LIMIT}\n"
                    "pool_checkout_timeout_secs = 30\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# /health pollers in their own process (their latency is the server's, not this loop's)


def _probe(host: str, port: int) -> tuple[str, float | None]:
    request = b"GET /health HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n"
    start = time.perf_counter()
    data = b""
    try:
        sock = socket.create_connection((host, port), timeout=10)
    except OSError as exc:
        return f"connect error: {_error_name(exc)}", None
    try:
        with sock:
            sock.sendall(request)
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        status = _status_of(data)
        return (status or f"error: {_error_name(exc)}"), None
    status = _status_of(data)
    if status is None:
        return "no response", None
    return status, time.perf_counter() - start if status == "200" else None


def _health_child(host: str, port: int, pollers: int, interval: float) -> None:
    if not is_loopback_host(host):
        sys.exit(f"refusing to poll non-loopback host {host}")
    stop = threading.Event()
    lock = threading.Lock()
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()

    def poll() -> None:
        for _ in range(MAX_ITERATIONS):
            if stop.is_set():
                return
            label, latency = _probe(host, port)
            with lock:
                outcomes[label] += 1
                if latency is not None:
                    latencies.append(latency)
            stop.wait(interval)

    threads = [threading.Thread(target=poll, daemon=True) for _ in range(pollers)]
    for t in threads:
        t.start()
    common.child_reply({"started": True})
    sys.stdin.readline()  # any line (or EOF) stops the polling
    stop.set()
    for t in threads:
        t.join(15)
    with lock:
        common.child_reply({"latencies": latencies, "outcomes": dict(outcomes)})


# ----------------------------------------------------------------------------------------------
# server readings


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def settle_fds(pid: int, target: int | None, seconds: float) -> int:
    """FD count once it is back to ``target`` (or steady for 2 s without one), or at timeout."""
    deadline = time.monotonic() + seconds
    last = fd_count(pid)
    steady_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = fd_count(pid)
        if target is not None and 0 <= now <= target:
            return now
        if now != last:
            last, steady_since = now, time.monotonic()
        elif target is None and time.monotonic() - steady_since >= 2.0:
            return now
    return fd_count(pid)


def pool_state(host: str, port: int) -> tuple[int, int] | None:
    """(available, total) from /ready, or None."""
    import http.client

    try:
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            conn.request("GET", "/ready")
            payload = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        return int(payload["pool_available"]), int(payload["pool_total"])
    except (OSError, ValueError, KeyError):
        return None


def log_findings(lines: Sequence[str]) -> tuple[int, list[str]]:
    """Lines with "Traceback" or "error" (count), and their distinct shapes (ids, numbers out)."""
    hits = [line.rstrip() for line in lines if LOG_FINDING.search(line)]
    shapes: Counter[str] = Counter()
    for line in hits:
        text = line.split(" ", 1)[1] if re.match(r"\d{4}-\d\d-\d\dT", line) else line
        text = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "ID", text)
        shapes[re.sub(r"\d+(\.\d+)?", "N", text)] += 1
    return len(hits), [f"{n} × {shape}" for shape, n in shapes.most_common(10)]


# ----------------------------------------------------------------------------------------------
# main


def prepare_audio(stream_seconds: float, upload_seconds: float) -> tuple[list[bytes], bytes,
                                                                          list[bytes]]:
    from gigastt.testing.audio import speech_like, wav_bytes

    streams = [common.pcm16(speech_like(stream_seconds, seed=100 + k, rate=WS_RATE))
               for k in range(3)]
    garbage = common.pcm16(speech_like(2.0, seed=200, rate=WS_RATE))
    uploads = [wav_bytes(speech_like(upload_seconds, seed=300 + k), UPLOAD_RATE)
               for k in range(3)]
    return streams, garbage, uploads


def main(argv: list[str] | None = None) -> int:
    parser = common.arg_parser(__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="length of the soak after the warm-up (default 10; --quick 1)")
    parser.add_argument("--warmup", type=float, default=20.0, metavar="S",
                        help="seconds of the same mix before the start readings (default 20)")
    parser.add_argument("--settle", type=float, default=30.0, metavar="S",
                        help="how long to wait for the FDs to come back after the load (30)")
    parser.add_argument("--streams", type=int, default=2, help="live WS streams (default 2)")
    parser.add_argument("--rest", type=int, default=1, help="REST upload loops (default 1)")
    parser.add_argument("--sse", type=int, default=1, help="SSE upload loops (default 1)")
    parser.add_argument("--health", type=int, default=2, help="/health pollers (default 2)")
    parser.add_argument("--health-interval", type=float, default=0.1, metavar="S",
                        help="pause between one poller's probes (default 0.1)")
    parser.add_argument("--abusers", type=int, default=1,
                        help="clients of each abusive kind (default 1)")
    parser.add_argument("--stream-seconds", type=float, default=10.0,
                        help="audio per live WS session (default 10)")
    parser.add_argument("--upload-seconds", type=float, default=3.0,
                        help="audio per REST/SSE upload (default 3)")
    parser.add_argument("--upload-gap", type=float, default=1.0, metavar="S",
                        help="pause between one loop's uploads (default 1)")
    parser.add_argument("--abuse-gap", type=float, default=1.0, metavar="S",
                        help="pause between one abuser's attempts (default 1)")
    parser.add_argument("--sighup-every", type=float, default=60.0, metavar="S",
                        help="SIGHUP period; the first comes after half of it (default 60)")
    parser.add_argument("--pool-size", type=int, default=4, help="server --pool-size (4)")
    args = parser.parse_args(argv)
    minutes = 1.0 if args.quick and args.minutes == 10.0 else args.minutes
    info = common.machine_info()
    model = common.model_dir(args.model, int8=args.int8)
    stream_pcm, garbage_pcm, uploads = prepare_audio(args.stream_seconds, args.upload_seconds)
    size = MixSize(args.streams, args.rest, args.sse, args.abusers)
    workdir = tempfile.TemporaryDirectory(prefix="gigastt-soak-")
    config = Path(workdir.name) / "soak.toml"
    write_config(config, IDLE_TIMEOUTS[0])
    nonreader_hold = max(IDLE_TIMEOUTS) + 10.0

    warm = Tally()
    tally = Tally()
    sent: list[float] = []
    health: dict[str, Any] = {"latencies": [], "outcomes": {}}
    samples: list[tuple[float, float, int]] = []  # (seconds into the run, VmRSS MB, FDs)

    def make_ctx(t: Tally, seconds: float) -> Ctx:
        return Ctx(host=server.host, port=server.port, tally=t,
                   deadline=asyncio.get_running_loop().time() + seconds,
                   stream_pcm=stream_pcm, garbage_pcm=garbage_pcm, uploads=uploads,
                   abuse_gap=args.abuse_gap, upload_gap=args.upload_gap,
                   slowloris_byte_s=0.1, nonreader_hold=nonreader_hold)

    async def warm_up() -> None:
        await run_mix(make_ctx(warm, args.warmup), size)

    async def soak() -> None:
        ctx = make_ctx(tally, minutes * 60.0)

        async def sample() -> None:
            t0 = time.monotonic()
            while ctx.running():
                samples.append((round(time.monotonic() - t0, 1),
                                common.proc_status(server.pid).get("VmRSS", float("nan")),
                                fd_count(server.pid)))
                await asyncio.sleep(1.0)

        await run_mix(ctx, size, [sighups(ctx, server.pid, config, args.sighup_every, sent),
                                  sample()])

    server_rc: int | str = "?"
    with workdir, common.Server(model, "--config", str(config),
                                "--pool-size", str(args.pool_size)) as server:
        if not is_loopback_host(server.host):
            raise SystemExit(f"the server listens on {server.host}, not loopback: refusing")
        print(f"  server pid {server.pid} on {server.host}:{server.port}; warm-up "
              f"{args.warmup:.0f} s ...", file=sys.stderr, flush=True)
        asyncio.run(warm_up())
        fd_start = settle_fds(server.pid, None, args.settle)
        start = common.proc_status(server.pid)
        hwm_reset = common.reset_peak_rss(server.pid)
        print(f"  soak {minutes:g} min: RSS {start.get('VmRSS', 0):.0f} MB, {fd_start} fds ...",
              file=sys.stderr, flush=True)
        prober = common.Child([sys.executable, str(Path(__file__).resolve()), "health-child",
                               server.host, str(server.port), str(args.health),
                               str(args.health_interval)])
        prober.read()
        started = time.monotonic()
        cpu0 = common.proc_cpu_seconds(server.pid), time.process_time()
        try:
            asyncio.run(soak())
        finally:
            try:
                health = prober.finish()
            except Exception as exc:  # the pollers' process failed: say so, keep the rest
                prober.kill()
                tally.add("harness", f"/health process failed: {exc}", 0.0, admitted=None,
                          answered=None)
        load_s = time.monotonic() - started
        cpu = ((common.proc_cpu_seconds(server.pid) - cpu0[0]) / load_s * 100,
               (time.process_time() - cpu0[1]) / load_s * 100)
        print("  load stopped; settling ...", file=sys.stderr, flush=True)
        alive = server.proc.poll() is None
        fd_end = settle_fds(server.pid, fd_start, args.settle) if alive else -1
        time.sleep(2.0)
        end = common.proc_status(server.pid)
        pool = pool_state(server.host, server.port) if alive else None
        try:
            server_rc = server.stop()
        except Exception as exc:  # did not drain in time: killed
            server_rc = f"killed ({type(exc).__name__})"
    lines = list(server.lines)

    # --- report --------------------------------------------------------------------------------
    probes = health.get("latencies", [])
    for label, n in health.get("outcomes", {}).items():
        admitted = label not in REJECTED and not label.startswith("connect error")
        row = tally.rows.setdefault(("GET /health", label),
                                    Row(admitted=admitted, answered=label == "200"))
        row.count += int(n)
        if label == "200":
            row.seconds = [float(x) for x in probes]
    probes_ms = [x * 1e3 for x in probes]
    rss_start = start.get("VmRSS", float("nan"))
    rss_end = end.get("VmRSS", float("nan"))
    ratio = rss_end / rss_start if rss_start else float("nan")
    log_count, log_shapes = log_findings(lines)
    reloads = sum("config reloaded" in line for line in lines)
    lost = tally.lost + warm.lost

    rows = []
    for (kind, outcome), r in sorted(tally.rows.items()):
        expected = outcome in EXPECTED.get(kind, ()) or outcome in REJECTED
        rows.append([kind, outcome, str(r.count),
                     "–" if r.admitted is None else ("yes" if r.admitted else "no"),
                     "–" if r.admitted is None else ("yes" if r.answered else "no"),
                     "yes" if expected else "**no**",
                     common.fmt(common.median(r.seconds)) if r.seconds else "–",
                     common.fmt(max(r.seconds)) if r.seconds else "–"])
    encoder = "INT8" if args.int8 else "FP32"
    print(f"\n### Soak — model `{args.model}`, {encoder} encoder, pool {args.pool_size}, "
          f"{minutes:g} min after a {args.warmup:.0f} s warm-up (load {load_s:.0f} s with the "
          f"last clients finishing); {args.streams} live "
          f"streams, {args.rest} REST + {args.sse} SSE loops, {args.health} /health pollers, "
          f"{args.abusers} of each abuser\n")
    print(common.markdown_table(["client", "outcome", "count", "admitted", "answered",
                                 "as documented", "p50 s", "max s"], rows))
    print(f"\nevery admitted request answered: {'yes' if lost == 0 else 'no'} "
          f"({tally.admitted} admitted, {tally.lost} lost; warm-up: {warm.admitted} admitted, "
          f"{warm.lost} lost)")
    resources = [
        ["server RSS MB", common.fmt(rss_start, 1),
         common.fmt(end.get("VmHWM"), 1) + ("" if hwm_reset else " (since start-up)"),
         common.fmt(rss_end, 1), common.fmt(ratio, 3) + "×"],
        ["open FDs", str(fd_start), str(max((f for _, _, f in samples), default=-1)) +
         " (sampled)", str(fd_end), "–"],
    ]
    print()
    print(common.markdown_table(["server", "start", "peak", "end", "end ÷ start"], resources))
    print(f"\n/health during the run: {len(probes_ms)} answered, p50 "
          f"{common.fmt(common.percentile(probes_ms, 50), 1)} ms, p99 "
          f"{common.fmt(common.percentile(probes_ms, 99), 1)} ms, max "
          f"{common.fmt(max(probes_ms) if probes_ms else None, 1)} ms, over 1 s: "
          f"{sum(x > 1000 for x in probes_ms)}")
    print(f"CPU during the load (100 % = one core): server {cpu[0]:.0f} %, harness "
          f"{cpu[1]:.0f} % (without the /health process)")
    print(f"SIGHUP sent: {len(sent)}, reloads logged: {reloads}")
    pool_text = f"{pool[0]}/{pool[1]}" if pool else "unknown"
    print(f"inference slots free after the load: {pool_text}; server exit: {server_rc}")
    print(f"server log lines with Traceback/error: {log_count}")
    for shape in log_shapes:
        print(f"    {shape[:200]}")

    failures = []
    if lost:
        failures.append(f"{lost} admitted requests unanswered")
    if not alive:
        failures.append("the server died during the run")
    if fd_end < 0 or fd_end > fd_start:
        failures.append(f"open FDs {fd_start} -> {fd_end}")
    if not ratio <= 1.10:
        failures.append(f"RSS end ÷ start {ratio:.3f} > 1.10")
    if pool is None or pool[0] != pool[1]:
        failures.append(f"inference slots free after the load: {pool_text}")
    findings = [f"{n} × {k}: {o}" for k, o, n in tally.unexpected()]
    if log_count:
        findings.append(f"{log_count} server log lines with Traceback/error")
    if len(sent) != reloads:
        findings.append(f"{len(sent)} SIGHUPs but {reloads} reloads logged")
    for text in findings:
        print(f"FINDING: {text}")
    print("RESULT: " + ("FAIL — " + "; ".join(failures) if failures else "pass"))
    print(f"\nMachine: {common.machine_line(info)}")
    common.write_json(args.json, {
        "benchmark": "soak", "model": args.model, "encoder": encoder.lower(),
        "minutes": minutes, "load_s": load_s, "warmup_s": args.warmup, "mix": vars(size),
        "machine": info, "outcomes": tally.as_json(), "warmup_outcomes": warm.as_json(),
        "admitted": tally.admitted, "lost": lost, "rss_start_mb": rss_start,
        "rss_peak_mb": end.get("VmHWM"), "hwm_reset": hwm_reset, "rss_end_mb": rss_end,
        "rss_ratio": ratio, "samples": samples, "fd_start": fd_start, "fd_end": fd_end,
        "health_ms": probes_ms, "cpu_pct": cpu, "sighups": len(sent), "reloads": reloads,
        "pool_end": pool,
        "log_findings": log_count, "log_shapes": log_shapes, "server_exit": server_rc,
        "findings": findings, "failures": failures})
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "health-child":
        _health_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
    else:
        sys.exit(main())
