"""Hostile clients against a real server: metrics label cardinality, live gauges, deeply nested
WebSocket text messages, and queued WebSocket clients that vanish."""

from __future__ import annotations

import asyncio
import json
import random
import re
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from gigastt.server.metrics import STATUS_LABELS
from gigastt.testing.audio import silence
from tests.serverproc import ServerProcess, parse_response, raw_exchange, serving
from tests.wsclient import close_code, collect, frame, open_session, pcm16, raw_upgrade

METHODS = {"GET", "HEAD", "POST", "OPTIONS", "other"}
PATHS = {"/v1/models", "/v1/transcribe", "/v1/transcribe/stream", "/v1/ws", "/metrics", "other"}
STATUSES = {str(code) for code in STATUS_LABELS} | {"other"}
# h11 accepts any RFC 9110 token as a method.
TOKEN = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
SERIES = re.compile(r'^gigastt_http_requests_total\{method="(.*)",path="(.*)",status="(.*)"\} ',
                    re.M)


@pytest.fixture(scope="module")
def server(tone_model: Path) -> Iterator[ServerProcess]:
    yield from serving(tone_model, "--metrics", "--pool-size", "1",
                       "--pool-checkout-timeout-secs", "60",
                       absent=("Traceback", "connection error"))


def scrape(server: ServerProcess) -> str:
    reply = server.request("GET", "/metrics")
    assert reply.status == 200
    return reply.body.decode()


def gauge(text: str, name: str) -> int | None:
    match = re.search(rf"^{name} (-?\d+)$", text, re.M)
    return int(match.group(1)) if match else None


def wait_for_gauge(server: ServerProcess, name: str, value: int, timeout: float = 10.0) -> str:
    """Scrapes (and only scrapes) until the gauge reads ``value``; returns the last scrape."""
    deadline = time.monotonic() + timeout
    while True:
        text = scrape(server)
        if gauge(text, name) == value or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


# --- /metrics label cardinality ----------------------------------------------------------------


def _random_request(rng: random.Random) -> bytes:
    method = "".join(rng.choice(TOKEN) for _ in range(rng.randint(1, 300)))
    path = rng.choice([f"/{rng.getrandbits(64):x}", "/v1/models", "/metrics", "/v1/transcribe",
                       "/v1/ws", f"/v1/models?{rng.getrandbits(32)}"])
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\ncontent-length: 0\r\n\r\n".encode()


def test_client_input_cannot_create_metric_series(server: ServerProcess) -> None:
    rng = random.Random(15)
    # Inputs that provoke the statuses a client can reach, with odd methods and paths mixed in.
    provoking = [
        b"POST /v1/transcribe HTTP/1.1\r\nHost: x\r\ncontent-length: 0\r\n\r\n",  # 400
        b"POST /v1/transcribe HTTP/1.1\r\nHost: x\r\ncontent-length: 4\r\n\r\nRIFF",  # 422
        b"OPTIONS /v1/transcribe/stream HTTP/1.1\r\nHost: x\r\n\r\n",  # 204
        b"GET /v1/ws HTTP/1.1\r\nHost: x\r\n\r\n",  # 400: not an upgrade
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",  # 200
        b"DELETE /v1/ws HTTP/1.1\r\nHost: x\r\n\r\n",  # 405
    ]
    statuses: set[int] = set()
    sock = server.connect()
    try:
        for i in range(700):
            data = provoking[i % len(provoking)] if i % 7 == 0 else _random_request(rng)
            reply = raw_exchange(sock, data)
            if not reply:  # the server closed the connection: carry on with a new one
                sock.close()
                sock = server.connect()
                reply = raw_exchange(sock, data)
            status, headers, _ = parse_response(reply)
            statuses.add(status)
            if headers.get("connection") == "close":
                sock.close()
                sock = server.connect()
    finally:
        sock.close()
    assert {200, 204, 400, 404, 405, 422} <= statuses
    text = scrape(server)
    series = SERIES.findall(text)
    assert series
    for method, path, status in series:
        assert method in METHODS and path in PATHS and status in STATUSES, (method, path, status)
    assert len(series) <= len(METHODS) * len(PATHS) * len(STATUSES)
    durations = re.findall(r'^gigastt_http_request_duration_seconds_count\{(.*)\} ', text, re.M)
    assert 0 < len(durations) <= len(METHODS) * len(PATHS)
    assert len(text) < 200_000


# --- live gauges -------------------------------------------------------------------------------


async def _waiter(server: ServerProcess) -> ClientConnection:
    """A client past the 101 that waits for a slot (no ``ready`` yet)."""
    return await connect(f"ws://{server.host}:{server.port}/v1/ws", max_size=None,
                         compression=None)


def test_pool_gauges_are_current_at_scrape_time(server: ServerProcess) -> None:
    async def main() -> tuple[str, str]:
        holder, _ = await open_session(server)
        waiters = [await _waiter(server) for _ in range(3)]
        # Only /metrics is requested: neither /ready nor /v1/models refreshes anything.
        busy = await asyncio.to_thread(wait_for_gauge, server, "gigastt_pool_waiters", 3)
        await holder.send(json.dumps({"type": "stop"}))
        await collect(holder)
        for ws in waiters:
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "ready"
            await ws.send(json.dumps({"type": "stop"}))
            await collect(ws)
        idle = await asyncio.to_thread(wait_for_gauge, server, "gigastt_pool_available", 1)
        return busy, idle

    busy, idle = asyncio.run(main())
    assert gauge(busy, "gigastt_pool_waiters") == 3
    assert gauge(busy, "gigastt_pool_available") == 0
    assert gauge(busy, "gigastt_ws_active_connections") == 4
    assert gauge(idle, "gigastt_pool_waiters") == 0
    assert gauge(idle, "gigastt_pool_available") == 1


# --- deeply nested text messages ---------------------------------------------------------------


@pytest.mark.parametrize("depth", [400, 100_000])
@pytest.mark.parametrize("kind", ["array", "object", "unclosed"])
def test_deeply_nested_text_message_is_ignored(server: ServerProcess, depth: int,
                                               kind: str) -> None:
    if kind == "array":
        nested = "[" * depth + "]" * depth
    elif kind == "object":
        nested = '{"":' * depth + "1" + "}" * depth  # 500 kB at 100 000: under the frame cap
    else:
        nested = "[" * depth
    text = '{"type":"configure","x":' + nested + ("}" if kind != "unclosed" else "")

    async def main() -> tuple[list[dict[str, Any]], int | None]:
        ws, _ = await open_session(server)
        await ws.send(text)
        await ws.send(pcm16(silence(0.5, 48000)))
        await ws.send(text)  # after audio: still ignored, not a late configure
        await ws.send(json.dumps({"type": "stop"}))
        messages = await collect(ws, timeout=15)
        await ws.wait_closed()
        return messages, ws.close_code

    messages, code = asyncio.run(main())
    assert [m["type"] for m in messages] == ["final"]
    assert code == 1000


# --- queued clients that vanish ----------------------------------------------------------------


def _rst(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_queued_clients_that_vanish_leave_the_queue_at_once(server: ServerProcess) -> None:
    async def main() -> None:
        holder, _ = await open_session(server)
        gone = [raw_upgrade(server)[0] for _ in range(3)]
        text = await asyncio.to_thread(wait_for_gauge, server, "gigastt_pool_waiters", 3)
        assert gauge(text, "gigastt_pool_waiters") == 3
        _rst(gone[0])
        gone[1].close()
        gone[2].shutdown(socket.SHUT_WR)  # half-closed: it can never send a frame again
        text = await asyncio.to_thread(wait_for_gauge, server, "gigastt_pool_waiters", 0, 5.0)
        assert gauge(text, "gigastt_pool_waiters") == 0
        assert gauge(text, "gigastt_ws_active_connections") == 1
        gone[2].close()
        # A new waiter is next in line, and served as soon as the holder leaves.
        fresh = await _waiter(server)
        await asyncio.to_thread(wait_for_gauge, server, "gigastt_pool_waiters", 1)
        await holder.send(json.dumps({"type": "stop"}))
        await collect(holder)
        assert json.loads(await asyncio.wait_for(fresh.recv(), 5))["type"] == "ready"
        await fresh.send(json.dumps({"type": "stop"}))
        await collect(fresh)

    asyncio.run(main())
    assert gauge(wait_for_gauge(server, "gigastt_pool_available", 1), "gigastt_pool_available") == 1


@pytest.mark.parametrize("audio_bytes", [9_600, 300_000])
def test_frames_sent_while_queued_are_processed_after_ready(server: ServerProcess,
                                                            audio_bytes: int) -> None:
    """Watching a queued client for EOF must not lose what it sends meanwhile, however much."""
    async def main() -> list[tuple[int, bytes]]:
        holder, _ = await open_session(server)
        sock, frames = raw_upgrade(server)
        early = (frame(0x1, b'{"type":"configure","sample_rate":16000}')
                 + b"".join(frame(0x2, bytes(min(60_000, audio_bytes - i)))
                            for i in range(0, audio_bytes, 60_000))
                 + frame(0x1, b'{"type":"stop"}'))
        await asyncio.to_thread(sock.sendall, early)
        await asyncio.to_thread(wait_for_gauge, server, "gigastt_pool_waiters", 1)
        await holder.send(json.dumps({"type": "stop"}))
        await collect(holder)
        got: list[tuple[int, bytes]] = []
        sock.settimeout(15)
        while (item := await asyncio.to_thread(frames.next)) is not None:
            got.append(item)
            if item[0] == 0x8:
                break
        sock.close()
        return got

    got = asyncio.run(main())
    texts = [json.loads(payload) for opcode, payload in got if opcode == 0x1]
    assert [m["type"] for m in texts] == ["ready", "final"]
    assert got[-1][0] == 0x8 and close_code(got[-1][1]) == 1000
