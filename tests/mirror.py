"""A loopback model mirror for tests: serves model files over HTTP with faults on demand
(errors, drops, stalls, wrong ranges, redirects, held answers) and records every request.
"""

from __future__ import annotations

import http.server
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Served:
    name: str
    range: str | None
    status: int = 0
    sent: int = 0


@dataclass
class Faults:
    status: dict[str, int] = field(default_factory=dict)  # every request for the file
    fail_first: dict[str, int] = field(default_factory=dict)  # n × 500, then normal
    drop_after: dict[str, int] = field(default_factory=dict)  # once: close after n body bytes
    stall_after: dict[str, tuple[int, float]] = field(default_factory=dict)  # once: n, seconds
    corrupt: set[str] = field(default_factory=set)
    ignore_range: bool = False
    wrong_range: bool = False  # once: 206 whose Content-Range starts elsewhere
    rate: float | None = None  # bytes per second, for every file
    redirect: bool = False  # /models/<f> answers 302 to /cdn/<f>, as Hugging Face does
    hold: threading.Event | None = None  # every request waits for it before any answer


class ModelServer:
    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.faults = Faults()
        self.served: list[Served] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                owner.handle(self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/models"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def requests(self, name: str | None = None) -> list[Served]:
        with self.lock:
            return [s for s in self.served if name is None or s.name == name]

    def handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        faults = self.faults
        if faults.redirect and h.path.startswith("/models/"):
            h.send_response(302)
            h.send_header("Location", h.path.replace("/models/", "/cdn/", 1))
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        name = h.path.removeprefix("/models/").removeprefix("/cdn/")
        record = Served(name, h.headers.get("Range"))
        with self.lock:
            self.served.append(record)
            forced = faults.status.get(name)
            if forced is None and faults.fail_first.get(name, 0) > 0:
                faults.fail_first[name] -= 1
                forced = 500
            drop = faults.drop_after.pop(name, None)
            stall = faults.stall_after.pop(name, None)
            wrong_range = faults.wrong_range
            faults.wrong_range = False
        if faults.hold is not None:  # recorded first, so a test sees that it was asked
            faults.hold.wait(60)
        h.close_connection = True
        data = self.files.get(name)
        if data is None and forced is None:
            forced = 404
        if forced is not None:
            record.status = forced
            h.send_response(forced)
            h.send_header("Content-Length", "0")
            h.send_header("Connection", "close")
            h.end_headers()
            return
        assert data is not None
        if name in faults.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", record.range or "")
        if match and not faults.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                record.status = 416
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(data)}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            shown = start + 1000 if wrong_range else start
            record.status = 206
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {shown}-{len(data) - 1}/{len(data)}")
        else:
            record.status = 200
            h.send_response(200)
        body = data[start:]
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Connection", "close")
        h.end_headers()
        limit = len(body) if drop is None else drop
        step = 16384
        try:
            while record.sent < limit:
                chunk = body[record.sent : min(limit, record.sent + step)]
                h.wfile.write(chunk)
                h.wfile.flush()
                record.sent += len(chunk)
                if stall is not None and record.sent >= stall[0]:
                    time.sleep(stall[1])
                    stall = None
                if faults.rate:
                    time.sleep(len(chunk) / faults.rate)
        except (BrokenPipeError, ConnectionResetError):
            pass
