"""The uvicorn side of ``bench/health.py``: a bare ASGI app answering ``GET /health`` like ours.

Same JSON body, same ``content-type``, a fresh ``x-request-id`` per response and an explicit
``content-length``; uvicorn adds ``date`` (as ours does) and is run with ``--no-server-header``.
Run by the harness from the repository root as
``python -m uvicorn bench.asgi_health:app --http h11 --loop asyncio``.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gigastt import __version__
from gigastt.protocol import health

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

BODY = health(__version__).encode()
NOT_FOUND = b'{"error":"not found"}'


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    ok = scope["path"] == "/health" and scope["method"] in ("GET", "HEAD")
    body = BODY if ok else NOT_FOUND
    await send({
        "type": "http.response.start",
        "status": 200 if ok else 404,
        "headers": [
            (b"content-type", b"application/json"),
            (b"x-request-id", str(uuid.uuid4()).encode()),
            (b"content-length", str(len(body)).encode()),
        ],
    })
    await send({"type": "http.response.body", "body": body})
