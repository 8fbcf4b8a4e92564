"""A real ``gigastt serve`` subprocess on a loopback port, and small raw HTTP helpers for tests.
"""

from __future__ import annotations

import http.client
import os
import re
import signal as signals
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LISTENING = re.compile(r"listening on http://(\[[^\]]+\]|[^:]+):(\d+)")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        import json

        return json.loads(self.body)


class ServerProcess:
    """Starts the server with ``--port 0`` and learns the port from its log line."""

    def __init__(self, model_dir: Path, *args: str, env: dict[str, str] | None = None,
                 host: str = "127.0.0.1") -> None:
        cmd = [sys.executable, "-m", "gigastt", "serve", "--host", host, "--port", "0",
               "--model-dir", str(model_dir), *args]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("GIGASTT_")}
        full_env.update(env or {})
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.host = ""
        self.port = 0
        threading.Thread(target=self._pump, daemon=True).start()
        if not self._ready.wait(60):
            self.proc.kill()
            raise RuntimeError("server did not start:\n" + "".join(self.lines))
        if not self.port:
            raise RuntimeError("server exited:\n" + "".join(self.lines))

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            match = LISTENING.search(line)
            if match and not self.port:
                self.host = match.group(1).strip("[]")
                self.port = int(match.group(2))
                self._ready.set()
        self._ready.set()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def connect(self, timeout: float = 30.0) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=timeout)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 60.0) -> Reply:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        finally:
            conn.close()

    def signal(self, sig: int = signals.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def stop(self, sig: int = signals.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def serving(model_dir: Path, *args: str,
            absent: Sequence[str] = ("Traceback",)) -> Iterator[ServerProcess]:
    """The body of a module-scoped server fixture: the server, then a clean stop (exit 0) with
    none of ``absent`` in its log."""
    proc = ServerProcess(model_dir, *args)
    yield proc
    assert proc.stop() == 0
    for text in absent:
        assert text not in proc.log


def scrape_metrics(server: ServerProcess) -> dict[str, float]:
    """``/metrics`` as {sample name with labels: value}."""
    text = server.request("GET", "/metrics").body.decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = re.fullmatch(r"(gigastt_[a-z_]+(?:\{[^}]*\})?) (\S+)", line)
        if match:
            values[match.group(1)] = float(match.group(2))
    return values


def pool_idle(server: ServerProcess, timeout: float = 10.0) -> bool:
    """Wait until ``/ready`` shows every admission slot free again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = server.request("GET", "/ready").json()
        if isinstance(body, dict) and body.get("pool_available") == body.get("pool_total"):
            return True
        time.sleep(0.05)
    return False


def raw_exchange(sock: socket.socket, data: bytes, *, until_close: bool = False,
                 timeout: float = 10.0) -> bytes:
    """Send bytes, then read one response (or everything until the server closes)."""
    sock.settimeout(timeout)
    if data:
        sock.sendall(data)
    received = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        received += chunk
        if not until_close and _complete(received):
            break
    return received


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return match is None or len(body) >= int(match.group(1))


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def get(path: str, host: str = "x", extra: Sequence[str] = ()) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", *extra, "", ""]
    return "\r\n".join(lines).encode()
