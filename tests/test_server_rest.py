"""REST end to end against a real ``gigastt serve`` subprocess (docs/api.md).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gigastt import __version__
from gigastt.testing.audio import speech_like, wav_bytes
from tests.conftest import long_speech
from tests.serverproc import ServerProcess, get, parse_response, raw_exchange, serving
from tests.wsclient import handshake, stream

UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def server(small_model: Path) -> Iterator[ServerProcess]:
    yield from serving(small_model, "--metrics", "--allow-origin", "https://app.example.com",
                       "--header-timeout-secs", "2", absent=("Traceback", "connection error"))


def healthy(server: ServerProcess) -> bool:
    return server.request("GET", "/health").status == 200


# --- REST basics ----------------------------------------------------------------------------------


def test_r1_health(server: ServerProcess) -> None:
    reply = server.request("GET", "/health")
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    expected = f'{{"status":"ok","model":"gigaam-v3-e2e-rnnt","version":"{__version__}"}}'
    assert reply.body == expected.encode()
    assert "date" in reply.headers and "server" not in reply.headers


def test_r2_transcribe_wav(server: ServerProcess) -> None:
    reply = server.request("POST", "/v1/transcribe", wav_bytes(speech_like(2.0, seed=3)))
    assert reply.status == 200
    body = reply.json()
    assert isinstance(body, dict) and list(body) == ["text", "words", "duration"]
    assert isinstance(body["text"], str) and isinstance(body["words"], list)
    assert body["duration"] == 2.0
    for word in body["words"]:
        assert list(word) == ["word", "start", "end", "confidence"]
    assert body["text"] == " ".join(w["word"] for w in body["words"])


def test_file_replies_are_unchanged_by_concurrent_streams_and_uploads(
        server: ServerProcess) -> None:
    """Both inference lanes busy at once, and two uploads decoded in lock-step, change no byte."""
    body = wav_bytes(speech_like(45.0, seed=11))  # three windows
    alone = server.request("POST", "/v1/transcribe", body)
    assert alone.status == 200 and len(alone.json()["words"]) > 20  # type: ignore[index]

    async def busy() -> list[Any]:
        streams = [stream(server, speech_like(6.0, seed=n), 1600, pace=0.05) for n in range(2)]
        uploads = [asyncio.to_thread(server.request, "POST", "/v1/transcribe", body)
                   for _ in range(2)]
        return await asyncio.gather(*streams, *uploads)

    (first, _), (second, _), *replies = asyncio.run(busy())
    assert [m["type"] for m in (first[-1], second[-1])] == ["final", "final"]
    assert [(r.status, r.body) for r in replies] == [(200, alone.body)] * 2


def test_r3_empty_body(server: ServerProcess) -> None:
    reply = server.request("POST", "/v1/transcribe", b"")
    assert reply.status == 400
    assert reply.body == b'{"code":"empty_body","error":"Empty request body"}'


def test_r4_garbage_audio(server: ServerProcess) -> None:
    reply = server.request("POST", "/v1/transcribe", bytes(range(256)) * 4)
    assert reply.status == 422
    assert reply.json() == {"code": "transcription_error",
                            "error": "Transcription failed. Check audio format."}
    assert healthy(server)


def test_e1_body_over_the_limit_is_rejected_before_reading(server: ServerProcess) -> None:
    with server.connect() as sock:
        head = (b"POST /v1/transcribe HTTP/1.1\r\nHost: x\r\nContent-Length: 53477376\r\n\r\n")
        status, headers, body = parse_response(raw_exchange(sock, head + b"RIFF" * 1000,
                                                            until_close=True))
    assert status == 413 and headers["connection"] == "close"
    assert json.loads(body) == {"code": "payload_too_large",
                                "error": "Request body exceeds the configured size limit"}
    assert healthy(server)


def test_e1_chunked_body_over_the_limit(small_model: Path) -> None:
    proc = ServerProcess(small_model, "--body-limit-bytes", "1000")
    try:
        with proc.connect() as sock:
            chunk = b"400\r\n" + b"a" * 0x400 + b"\r\n"
            head = b"POST /v1/transcribe HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            status, _, body = parse_response(raw_exchange(sock, head + chunk * 2,
                                                          until_close=True))
        assert status == 413 and b"payload_too_large" in body
        ok = proc.request("POST", "/v1/transcribe", b"x" * 1000)
        assert ok.status == 422  # exactly at the limit: read, then rejected as audio
    finally:
        assert proc.stop() == 0


# --- routing rules ------------------------------------------------------------------------------


def test_unknown_path_and_trailing_slash_are_404_with_empty_body(server: ServerProcess) -> None:
    for path in ("/nope", "/v1/models/", "/ws"):
        reply = server.request("GET", path)
        assert reply.status == 404 and reply.body == b""
        assert reply.headers["content-length"] == "0" and "content-type" not in reply.headers


def test_wrong_method_is_405_with_allow(server: ServerProcess) -> None:
    assert server.request("POST", "/health").headers["allow"] == "GET,HEAD"
    assert server.request("DELETE", "/v1/models").headers["allow"] == "GET,HEAD"
    reply = server.request("GET", "/v1/transcribe")
    assert reply.status == 405 and reply.headers["allow"] == "POST,OPTIONS"


def test_head_runs_get_and_strips_the_body(server: ServerProcess) -> None:
    with server.connect() as sock:
        data = raw_exchange(sock, b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n", timeout=2)
    status, headers, body = parse_response(data)
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0


def test_query_strings_are_ignored(server: ServerProcess) -> None:
    assert server.request("GET", "/v1/models?x=1").status == 200


def test_ready_and_models(server: ServerProcess) -> None:
    ready = server.request("GET", "/ready")
    assert ready.status == 200
    assert ready.body == b'{"status":"ready","pool_available":4,"pool_total":4}'
    models = server.request("GET", "/v1/models").json()
    assert isinstance(models, dict)
    assert list(models) == ["id", "name", "version", "encoder", "vocab_size", "sample_rate",
                            "pool_size", "pool_available", "supported_formats",
                            "supported_rates", "diarization"]
    assert models["encoder"] == "fp32" and models["version"] == __version__
    assert models["sample_rate"] == 16000 and models["pool_size"] == 4
    assert "wav" in models["supported_formats"]
    assert models["supported_rates"] == [8000, 16000, 24000, 44100, 48000]


# --- request ids, origins ------------------------------------------------------------------------


def test_m1_request_ids(server: ServerProcess) -> None:
    generated = server.request("GET", "/health").headers["x-request-id"]
    assert UUID7.match(generated)
    echoed = server.request("GET", "/v1/models",
                            headers={"X-Request-Id": "my-custom-request-id-123"})
    assert echoed.headers["x-request-id"] == "my-custom-request-id-123"
    assert UUID7.match(server.request("GET", "/nope").headers["x-request-id"])


def test_m2_origin_policy(server: ServerProcess) -> None:
    evil = {"Origin": "https://evil.example.com"}
    assert server.request("GET", "/health", headers=evil).status == 200
    denied = server.request("GET", "/v1/models", headers=evil)
    assert denied.status == 403
    assert denied.body == b'{"code":"origin_denied","error":"Origin not allowed"}'
    assert "access-control-allow-origin" not in denied.headers
    local = server.request("GET", "/v1/models", headers={"Origin": "http://localhost:3000"})
    assert local.status == 200
    assert local.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert local.headers["access-control-allow-methods"] == "GET, POST, OPTIONS"
    assert local.headers["vary"] == "origin"
    assert "access-control-allow-origin" not in server.request("GET", "/v1/models").headers
    trick = {"Origin": "http://localhost.evil.example.com"}
    assert server.request("GET", "/v1/models", headers=trick).status == 403
    listed = server.request("GET", "/nope", headers={"Origin": "https://app.example.com"})
    assert listed.status == 404
    assert listed.headers["access-control-allow-origin"] == "https://app.example.com"


def null_origin_answers(server: ServerProcess) -> tuple[int, int, int]:
    """(REST, preflight, WebSocket upgrade) statuses for ``Origin: null``."""
    null = {"Origin": "null"}
    rest = server.request("GET", "/v1/models", headers=null).status
    preflight = server.request("OPTIONS", "/v1/transcribe", headers={
        **null, "Access-Control-Request-Method": "POST"}).status
    with server.connect() as sock:
        upgrade, _, _ = parse_response(raw_exchange(sock, handshake(extra="Origin: null\r\n")))
    return rest, preflight, upgrade


def test_null_origin_is_refused(server: ServerProcess) -> None:
    # D21: sandboxed iframes and data: pages of any web site send "null".
    assert null_origin_answers(server) == (403, 403, 403)
    denied = server.request("POST", "/v1/transcribe", body=wav_bytes(speech_like(1.0)),
                            headers={"Origin": "null"})
    assert denied.status == 403
    assert denied.json() == {"code": "origin_denied", "error": "Origin not allowed"}
    assert healthy(server)


def test_null_origin_allowed_when_listed(small_model: Path) -> None:
    proc = ServerProcess(small_model, "--allow-origin", "null")
    try:
        assert null_origin_answers(proc) == (200, 204, 101)
        reply = proc.request("GET", "/v1/models", headers={"Origin": "null"})
        assert reply.headers["access-control-allow-origin"] == "null"
    finally:
        assert proc.stop() == 0


def test_preflight(server: ServerProcess) -> None:
    reply = server.request("OPTIONS", "/v1/transcribe", headers={
        "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"})
    assert reply.status == 204 and reply.body == b""
    assert reply.headers["access-control-allow-origin"] == "https://app.example.com"
    assert server.request("OPTIONS", "/v1/models").status == 405


# --- metrics --------------------------------------------------------------------------------------


def test_metrics_parse_and_count(server: ServerProcess) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    server.request("GET", "/v1/models")
    server.request("GET", "/nope/secret")
    text = server.request("GET", "/metrics")
    assert text.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f for f in text_string_to_metric_families(text.body.decode())}
    assert "gigastt_http_requests" in families
    labels = {tuple(sorted(s.labels.items())) for s in families["gigastt_http_requests"].samples}
    assert (("method", "GET"), ("path", "/v1/models"), ("status", "200")) in labels
    assert (("method", "GET"), ("path", "other"), ("status", "404")) in labels
    assert not any(dict(lab).get("path") == "/nope/secret" for lab in labels)


def test_metrics_disabled(small_model: Path) -> None:
    proc = ServerProcess(small_model)
    try:
        reply = proc.request("GET", "/metrics")
        assert reply.status == 404
        assert reply.body == b'{"code":"metrics_disabled","error":"metrics endpoint disabled"}'
    finally:
        assert proc.stop() == 0


# --- HTTP/1.1 mechanics -----------------------------------------------------------------------


def test_keep_alive_and_pipelining(server: ServerProcess) -> None:
    with server.connect() as sock:
        data = raw_exchange(sock, get("/health") + get("/ready") + get("/nope"), timeout=2,
                            until_close=False)
        while data.count(b"HTTP/1.1 ") < 3:
            more = sock.recv(65536)
            assert more
            data += more
    statuses = [int(m) for m in re.findall(rb"HTTP/1.1 (\d{3})", data)]
    assert statuses == [200, 200, 404]


def test_expect_100_continue(server: ServerProcess) -> None:
    body = wav_bytes(speech_like(1.0))
    with server.connect() as sock:
        head = (f"POST /v1/transcribe HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                "Expect: 100-continue\r\n\r\n").encode()
        sock.sendall(head)
        interim = sock.recv(4096)
        assert interim.startswith(b"HTTP/1.1 100 ")
        status, _, reply = parse_response(raw_exchange(sock, body))
    assert status == 200 and b'"duration":1.0' in reply


# --- malformed input: one test per case, the server stays healthy ---------------------------------


@pytest.mark.parametrize(
    ("name", "data", "status"),
    [
        ("bad request line", b"GARBAGE\r\n\r\n", 400),
        ("bad header bytes", b"GET /health HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", 400),
        ("control char in value", b"GET /health HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\n\r\n", 400),
        ("header name with space", b"GET /health HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n", 400),
        ("missing host", b"GET /health HTTP/1.1\r\n\r\n", 400),
        ("CL+TE smuggling",
         b"POST /v1/transcribe HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        ("negative content-length",
         b"POST /v1/transcribe HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400),
        ("conflicting content-lengths",
         b"POST /v1/transcribe HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
         b"Content-Length: 2\r\n\r\n", 400),
        ("huge content-length",
         b"POST /v1/transcribe HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999\r\n\r\n",
         413),
        ("broken chunked body",
         b"POST /v1/transcribe HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"zz\r\nabc\r\n0\r\n\r\n", 400),
        ("20 KiB header in one write",
         b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20480 + b"\r\n\r\n", 431),
    ],
)
def test_malformed_http(server: ServerProcess, name: str, data: bytes, status: int) -> None:
    with server.connect() as sock:
        reply = raw_exchange(sock, data, until_close=True)
    got, headers, _ = parse_response(reply)
    assert got == status, name
    assert "x-request-id" in headers
    assert healthy(server)


def test_oversized_header_arriving_slowly_is_431(server: ServerProcess) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
        for _ in range(20):
            try:
                sock.sendall(b"a" * 1024)
            except OSError:
                break
        status, _, _ = parse_response(raw_exchange(sock, b"", until_close=True))
    assert status == 431
    assert healthy(server)


def test_slowloris_is_cut_off_by_the_header_deadline(server: ServerProcess) -> None:
    """One byte per second: the 2 s head deadline closes the connection with 408."""
    started = time.monotonic()
    received = b""
    with server.connect() as sock:
        sock.settimeout(1.0)
        for byte in b"GET /health HTTP/1.1\r\nHost: x\r\n":
            try:
                sock.sendall(bytes([byte]))
                received += sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            if received:
                break
    assert received.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 6
    assert healthy(server)


def test_idle_connection_without_bytes_is_closed_silently(server: ServerProcess) -> None:
    with server.connect() as sock:
        assert raw_exchange(sock, b"", until_close=True, timeout=6) == b""


def test_client_vanishing_mid_upload_leaves_the_server_healthy(server: ServerProcess) -> None:
    with server.connect() as sock:
        sock.sendall(b"POST /v1/transcribe HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        sock.sendall(b"RIFF" * 100)
    assert healthy(server)
    assert server.request("GET", "/ready").json() == {
        "status": "ready", "pool_available": 4, "pool_total": 4}


def test_connection_cap(small_model: Path) -> None:
    proc = ServerProcess(small_model, "--max-connections", "2")
    try:
        held = [proc.connect(), proc.connect()]
        time.sleep(0.2)
        with proc.connect() as third:
            status, _, body = parse_response(raw_exchange(third, b"", until_close=True))
        assert status == 503
        assert json.loads(body)["code"] == "too_many_connections"
        for sock in held:
            sock.close()
        time.sleep(0.2)
        assert proc.request("GET", "/health").status == 200
    finally:
        assert proc.stop() == 0


def test_ipv6_loopback_and_localhost_bind(small_model: Path) -> None:
    for host in ("localhost", "[::1]", "::1"):
        if host != "localhost" and not socket.has_ipv6:
            continue
        proc = ServerProcess(small_model, host=host)
        try:
            assert proc.request("GET", "/health").status == 200
        finally:
            assert proc.stop() == 0


def test_event_loop_stays_responsive_while_the_executor_is_busy(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """/health latency while four 60 s files are transcribed (generous bound; figures printed)."""
    import http.client
    import statistics
    import threading

    from gigastt.testing.models import write_small_model

    model = write_small_model(tmp_path_factory.mktemp("medium"), d_model=256, layers=4)
    proc = ServerProcess(model, "--threads", "1")
    try:
        body = wav_bytes(long_speech(60.0, seed=4))
        statuses: list[int] = []
        uploads = [threading.Thread(target=lambda: statuses.append(
            proc.request("POST", "/v1/transcribe", body, timeout=120).status))
            for _ in range(4)]
        for t in uploads:
            t.start()
        latencies: list[float] = []
        conn = http.client.HTTPConnection(proc.host, proc.port, timeout=10)
        time.sleep(0.3)
        while any(t.is_alive() for t in uploads):
            started = time.perf_counter()
            conn.request("GET", "/health")
            assert conn.getresponse().read()
            latencies.append(time.perf_counter() - started)
            time.sleep(0.02)
        conn.close()
        for t in uploads:
            t.join()
        assert statuses == [200] * 4
        latencies.sort()
        p50 = statistics.median(latencies)
        p99 = latencies[int(len(latencies) * 0.99) - 1] if len(latencies) > 1 else latencies[0]
        print(f"/health under load: n={len(latencies)} p50={p50 * 1000:.1f} ms "
              f"p99={p99 * 1000:.1f} ms max={latencies[-1] * 1000:.1f} ms")
        assert len(latencies) >= 10
        assert latencies[-1] < 1.0
    finally:
        assert proc.stop() == 0
