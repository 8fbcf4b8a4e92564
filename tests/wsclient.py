"""WebSocket test clients: the ``websockets`` asyncio client, and raw frames over a socket.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.serverproc import ServerProcess


def pcm16(samples: np.ndarray) -> bytes:
    return np.clip(np.round(samples * 32768), -32768, 32767).astype("<i2").tobytes()


async def open_session(
    server: ServerProcess, **kwargs: Any
) -> tuple[ClientConnection, dict[str, Any]]:
    ws = await connect(f"ws://{server.host}:{server.port}/v1/ws", max_size=None,
                       compression=None, **kwargs)
    ready = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert ready["type"] == "ready"
    return ws, ready


async def recv_until_final(ws: ClientConnection, timeout: float = 30.0) -> list[dict[str, Any]]:
    messages = []
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        messages.append(message)
        if message["type"] == "final":
            return messages


async def collect(ws: ClientConnection, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Every message until the server closes the connection."""
    messages = []
    try:
        while True:
            messages.append(json.loads(await asyncio.wait_for(ws.recv(), timeout)))
    except ConnectionClosed:
        return messages


async def stream(server: ServerProcess, samples: np.ndarray, frame_samples: int, *,
                 rate: int = 16000, pace: float = 0.0) -> tuple[list[dict[str, Any]], Any]:
    """Send ``samples`` in frames, then stop; returns all messages and the close code."""
    ws, _ = await open_session(server)
    await ws.send(json.dumps({"type": "configure", "sample_rate": rate}))
    data = pcm16(samples)
    step = frame_samples * 2
    for start in range(0, len(data), step):
        await ws.send(data[start : start + step])
        if pace:
            await asyncio.sleep(pace)
    await ws.send(json.dumps({"type": "stop"}))
    messages = await collect(ws)
    await ws.wait_closed()
    return messages, ws.close_code


def handshake(host: str = "x", extra: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET /v1/ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{extra}\r\n").encode()


def frame(opcode: int, payload: bytes, *, mask: bool = True, fin: bool = True) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    length = len(payload)
    mask_bit = 0x80 if mask else 0
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 65536:
        head += bytes([mask_bit | 126]) + struct.pack(">H", length)
    else:
        head += bytes([mask_bit | 127]) + struct.pack(">Q", length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if length < 4096 else (
        np.frombuffer(payload, np.uint8) ^ np.resize(np.frombuffer(key, np.uint8), length)
    ).tobytes()
    return head + key + masked


class RawFrames:
    """Reads server frames from a raw socket (after the 101)."""

    def __init__(self, sock: socket.socket, leftover: bytes = b"") -> None:
        self.sock = sock
        self.buf = leftover

    def _need(self, n: int) -> bool:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                return False
            self.buf += chunk
        return True

    def next(self) -> tuple[int, bytes] | None:
        """(opcode, payload) of the next frame, or None at EOF."""
        if not self._need(2):
            return None
        opcode, length = self.buf[0] & 0x0F, self.buf[1] & 0x7F
        offset = 2
        if length == 126:
            self._need(4)
            length, offset = struct.unpack(">H", self.buf[2:4])[0], 4
        elif length == 127:
            self._need(10)
            length, offset = struct.unpack(">Q", self.buf[2:10])[0], 10
        if not self._need(offset + length):
            return None
        payload = self.buf[offset : offset + length]
        self.buf = self.buf[offset + length :]
        return opcode, payload


def raw_upgrade(server: ServerProcess, first: bytes = b"") -> tuple[socket.socket, RawFrames]:
    sock = server.connect(timeout=15)
    sock.sendall(handshake() + first)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "connection closed during handshake"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    return sock, RawFrames(sock, rest)


def close_code(payload: bytes) -> int:
    return int(struct.unpack(">H", payload[:2])[0]) if len(payload) >= 2 else 1005
