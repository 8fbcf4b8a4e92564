"""``POST /v1/audio/transcriptions`` against a real server: the official ``openai`` SDK, curl,
raw HTTP for what the SDK cannot send, and every refusal in OpenAI's error shape.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from gigastt.testing.audio import silence, tone_sequence, wav_bytes
from tests.serverproc import ServerProcess, parse_response, pool_idle, raw_exchange, serving
from tests.wsclient import open_session

PATH = "/v1/audio/transcriptions"
HELLO = ["▁При", "вет", ",", "▁мир", "."]
HOW = ["▁как", "▁де", "ла", "?"]
CLIP = wav_bytes(np.concatenate([tone_sequence(HELLO), silence(1.5), tone_sequence(HOW)]))
CLIP_TEXT = "Привет, мир. как дела?"
# Two recognition windows (over 20 s), cut in one of the pauses between tones.
LONG = wav_bytes(tone_sequence((HELLO + HOW) * 6, gap_s=0.3))
BOUNDARY = "gigastt-test-boundary"


@pytest.fixture(scope="module")
def server(tone_model: Path) -> Iterator[ServerProcess]:
    yield from serving(tone_model, "--metrics", absent=("Traceback", "connection error"))


@pytest.fixture(autouse=True)
def stays_healthy(server: ServerProcess) -> Iterator[None]:
    """After every test the module's server answers and has every slot free again."""
    yield
    assert server.request("GET", "/health").status == 200
    assert pool_idle(server)


def client(server: ServerProcess) -> openai.OpenAI:
    # No retries: a refusal must reach the test as it was sent.
    return openai.OpenAI(base_url=f"http://{server.host}:{server.port}/v1", api_key="x",
                         max_retries=0)


def async_client(server: ServerProcess) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://{server.host}:{server.port}/v1", api_key="x",
                              max_retries=0)


def native(server: ServerProcess, audio: bytes, fmt: str = "json") -> bytes:
    reply = server.request("POST", f"/v1/transcribe?format={fmt}", audio)
    assert reply.status == 200
    return reply.body


def form(fields: list[tuple[str, str]], file: bytes | None = CLIP,
         filename: str = "clip.wav") -> bytes:
    """A multipart/form-data body with ``BOUNDARY``: the text fields, then the file part."""
    parts = [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
             .encode() for name, value in fields]
    if file is not None:
        parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
                     f'filename="{filename}"\r\nContent-Type: audio/wav\r\n\r\n'.encode()
                     + file + b"\r\n")
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def post(server: ServerProcess, body: bytes, content_type: str | None = None,
         headers: dict[str, str] | None = None) -> Any:
    all_headers = dict(headers or {})
    all_headers["Content-Type"] = content_type or f"multipart/form-data; boundary={BOUNDARY}"
    return server.request("POST", PATH, body, all_headers)


def openai_body(reply: Any) -> dict[str, Any]:
    """The error object of an OpenAI-shaped error body; checks the shape exactly."""
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert isinstance(body, dict) and list(body) == ["error"]
    error = body["error"]
    assert list(error) == ["message", "type", "param", "code"]
    assert isinstance(error["message"], str) and error["message"]
    return error  # type: ignore[no-any-return]


def sse_events(body: bytes) -> list[Any]:
    """The ``data:`` payloads of an SSE body (``[DONE]`` as the string)."""
    events = []
    for block in body.decode().split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


# --- the official SDK ---------------------------------------------------------------------------


def test_json_text_srt_vtt_match_the_native_route(server: ServerProcess) -> None:
    sdk = client(server)
    native_json = json.loads(native(server, CLIP))
    assert native_json["text"] == CLIP_TEXT
    result = sdk.audio.transcriptions.create(file=("clip.wav", CLIP), model="whisper-1")
    assert result.text == CLIP_TEXT
    assert result.usage is not None and result.usage.type == "duration"
    assert result.usage.seconds == native_json["duration"] == 4.5
    for fmt in ("text", "srt", "vtt"):
        text = sdk.audio.transcriptions.create(file=("clip.wav", CLIP), model="whisper-1",
                                               response_format=fmt)
        assert text == native(server, CLIP, fmt).decode()
    assert text.startswith("WEBVTT\n")


def test_content_types_of_every_format(server: ServerProcess) -> None:
    expected = {"json": "application/json", "verbose_json": "application/json",
                "text": "text/plain; charset=utf-8", "srt": "application/x-subrip; charset=utf-8",
                "vtt": "text/vtt; charset=utf-8"}
    for fmt, content_type in expected.items():
        reply = post(server, form([("model", "whisper-1"), ("response_format", fmt)]))
        assert reply.status == 200 and reply.headers["content-type"] == content_type
    reply = post(server, form([("model", "whisper-1")]))
    assert reply.body == (b'{"text":"' + CLIP_TEXT.encode()
                          + b'","usage":{"type":"duration","seconds":4.5}}')


def test_verbose_json_segments_and_words(server: ServerProcess) -> None:
    sdk = client(server)
    native_json = json.loads(native(server, CLIP))
    plain = sdk.audio.transcriptions.create(file=("clip.wav", CLIP), model="whisper-1",
                                            response_format="verbose_json")
    assert plain.text == CLIP_TEXT and plain.language == "russian" and plain.duration == 4.5
    assert plain.words is None  # only with the `word` granularity
    assert plain.usage is not None and plain.usage.seconds == 4.5
    assert plain.segments is not None
    # The segments are the subtitle cues of the srt/vtt formats, in order.
    assert [s.text for s in plain.segments] == ["Привет, мир.", "как дела?"]
    assert " ".join(s.text for s in plain.segments) == plain.text
    assert [s.id for s in plain.segments] == [0, 1]
    first, second = plain.segments
    assert (first.start, second.start) == (0.32, 3.4)
    assert first.start < first.end <= second.start < second.end <= plain.duration
    assert (first.seek, second.seek) == (32, 340)
    assert len(first.tokens) == len(HELLO) and len(second.tokens) == len(HOW)
    for segment in plain.segments:
        assert segment.avg_logprob < 0 and segment.temperature == 0.0
        assert segment.compression_ratio == 1.0 and segment.no_speech_prob == 0.0

    worded = sdk.audio.transcriptions.create(file=("clip.wav", CLIP), model="whisper-1",
                                             response_format="verbose_json",
                                             timestamp_granularities=["word", "segment"])
    assert worded.words is not None and worded.segments == plain.segments
    assert [(w.word, w.start, w.end) for w in worded.words] == [
        (w["word"], w["start"], w["end"]) for w in native_json["words"]]
    raw = post(server, form([("response_format", "verbose_json"),
                             ("timestamp_granularities", "word")])).json()
    assert list(raw) == ["task", "language", "duration", "text", "segments", "words", "usage"]
    assert raw["task"] == "transcribe" and len(raw["words"]) == 4


def test_stream_deltas_add_up_to_the_json_text(server: ServerProcess) -> None:
    sdk = client(server)
    expected = sdk.audio.transcriptions.create(file=("long.wav", LONG), model="whisper-1").text
    assert expected == json.loads(native(server, LONG))["text"]
    events = list(sdk.audio.transcriptions.create(file=("long.wav", LONG), model="whisper-1",
                                                  stream=True))
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    assert len(deltas) >= 2  # one per recognition window: only final text, so only appended
    assert events[-1].type == "transcript.text.done" and events[:-1] == deltas
    assert "".join(d.delta for d in deltas) == events[-1].text == expected
    assert events[-1].usage is not None and events[-1].usage.type == "duration"


def test_stream_on_the_wire(server: ServerProcess) -> None:
    reply = post(server, form([("model", "whisper-1"), ("stream", "true"),
                               ("response_format", "text")]))
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/event-stream"
    assert reply.headers["transfer-encoding"] == "chunked"
    assert reply.body.endswith(b"\n\ndata: [DONE]\n\n")
    assert sse_events(reply.body) == [
        {"type": "transcript.text.delta", "delta": CLIP_TEXT},
        {"type": "transcript.text.done", "text": CLIP_TEXT,
         "usage": {"type": "duration", "seconds": 4.5}},
        "[DONE]",
    ]
    silent = post(server, form([("stream", "true")], file=wav_bytes(silence(1.0))))
    assert sse_events(silent.body) == [
        {"type": "transcript.text.done", "text": "",
         "usage": {"type": "duration", "seconds": 1.0}}, "[DONE]"]


def test_async_client_json_and_stream(server: ServerProcess) -> None:
    async def main() -> tuple[str, list[Any]]:
        sdk = async_client(server)
        try:
            result = await sdk.audio.transcriptions.create(file=("clip.wav", CLIP),
                                                           model="whisper-1", language="ru")
            stream = await sdk.audio.transcriptions.create(file=("clip.wav", CLIP),
                                                           model="gpt-4o-transcribe",
                                                           stream=True)
            return result.text, [event async for event in stream]
        finally:
            await sdk.close()

    text, events = asyncio.run(main())
    assert text == CLIP_TEXT
    assert [e.type for e in events] == ["transcript.text.delta", "transcript.text.done"]
    assert events[0].delta == events[1].text == CLIP_TEXT


def test_language_other_than_russian_is_refused(server: ServerProcess) -> None:
    sdk = client(server)
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.audio.transcriptions.create(file=("clip.wav", CLIP), model="whisper-1",
                                        language="en")
    assert caught.value.status_code == 400
    assert caught.value.code == "unsupported_language" and caught.value.param == "language"
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["type"] == "invalid_request_error"
    # `ru` in any case, or empty, is Russian; temperature is accepted and ignored; the prompt
    # is a hotword list (D29) that this clip's text does not need.
    for language in ("RU", "Ru", ""):
        reply = post(server, form([("language", language), ("prompt", "Привет"),
                                   ("temperature", "0.7"), ("model", "anything at all")]))
        assert reply.status == 200 and reply.json()["text"] == CLIP_TEXT


def test_undecodable_audio_is_422(server: ServerProcess) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client(server).audio.transcriptions.create(file=("clip.wav", bytes(range(256)) * 4),
                                                   model="whisper-1")
    assert caught.value.code == "invalid_audio"
    reply = post(server, form([], file=b"RIFF" + bytes(100)))
    assert reply.status == 422 and openai_body(reply)["code"] == "invalid_audio"


def test_curl_form_upload(server: ServerProcess, tmp_path: Path) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    clip = tmp_path / "clip.wav"
    clip.write_bytes(CLIP)
    url = f"http://{server.host}:{server.port}{PATH}"
    out = subprocess.run([curl, "-sS", "-F", f"file=@{clip}", "-F", "model=whisper-1", url],
                         capture_output=True, check=True, timeout=60)
    assert json.loads(out.stdout)["text"] == CLIP_TEXT
    out = subprocess.run([curl, "-sS", "-F", f"file=@{clip}", "-F", "response_format=srt", url],
                         capture_output=True, check=True, timeout=60)
    assert out.stdout == native(server, CLIP, "srt")


# --- bad requests: precise errors in OpenAI's shape ---------------------------------------------


@pytest.mark.parametrize(("fields", "file", "param", "code"), [
    ([("model", "whisper-1")], None, "file", "missing_required_parameter"),
    ([], b"", "file", "empty_file"),
    ([("response_format", "diarized_json")], CLIP, "response_format", "invalid_value"),
    ([("response_format", "JSON")], CLIP, "response_format", "invalid_value"),
    ([("stream", "yes")], CLIP, "stream", "invalid_value"),
    ([("stream", "true"), ("response_format", "srt")], CLIP, "stream", "invalid_value"),
    ([("timestamp_granularities[]", "sentence")], CLIP, "timestamp_granularities[]",
     "invalid_value"),
    ([("language", "ru"), ("language", "xx-zz")], CLIP, "language", "duplicate_parameter"),
    ([("language", "english")], CLIP, "language", "unsupported_language"),
])
def test_bad_fields(server: ServerProcess, fields: list[tuple[str, str]], file: bytes | None,
                    param: str, code: str) -> None:
    reply = post(server, form(fields, file=file))
    assert reply.status == 400
    error = openai_body(reply)
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param,
                                                              code)
    for _, value in fields:  # a client's value is never echoed back
        if len(value) > 3 and value != "true":
            assert value not in error["message"]


def test_bad_response_format_through_the_sdk(server: ServerProcess) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(server).audio.transcriptions.create(file=("clip.wav", CLIP), model="whisper-1",
                                                   response_format="diarized_json")
    assert caught.value.param == "response_format"


def test_not_multipart_is_415(server: ServerProcess) -> None:
    replies = [post(server, CLIP, content_type)
               for content_type in ("application/json", "audio/wav", "multipart/mixed; b=x")]
    replies.append(server.request("POST", PATH, CLIP))  # no Content-Type at all
    for reply in replies:
        assert reply.status == 415
        error = openai_body(reply)
        assert error["code"] == "unsupported_media_type" and error["param"] is None


@pytest.mark.parametrize(("body", "content_type", "message"), [
    (form([]), "multipart/form-data", "missing boundary parameter"),
    (form([]), "multipart/form-data; boundary=other", "boundary not found in body"),
    (form([])[:-10], None, "body ended before the closing boundary"),
    (b"--" + BOUNDARY.encode() + b"\r\nX: y\r\n\r\nz\r\n--" + BOUNDARY.encode() + b"--\r\n",
     None, "missing Content-Disposition"),
])
def test_malformed_multipart_is_400(server: ServerProcess, body: bytes,
                                    content_type: str | None, message: str) -> None:
    reply = post(server, body, content_type)
    assert reply.status == 400
    error = openai_body(reply)
    assert error["code"] == "invalid_multipart" and message in error["message"]


def test_empty_body_is_400(server: ServerProcess) -> None:
    reply = post(server, b"")
    assert reply.status == 400
    assert openai_body(reply) == {"message": "Empty request body",
                                  "type": "invalid_request_error", "param": None,
                                  "code": "empty_body"}


def test_body_over_the_limit_is_413_before_reading(server: ServerProcess) -> None:
    with server.connect() as sock:
        head = (f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 53477376\r\n"
                f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n").encode()
        status, headers, body = parse_response(raw_exchange(sock, head + b"x" * 1000,
                                                            until_close=True))
    assert status == 413 and headers["connection"] == "close"
    assert json.loads(body) == {"error": {
        "message": "Request body exceeds the configured size limit",
        "type": "invalid_request_error", "param": None, "code": "payload_too_large"}}


def test_origin_denied_in_the_route_shape_only(server: ServerProcess) -> None:
    evil = {"Origin": "https://evil.example.com"}
    reply = post(server, form([]), headers=evil)
    assert reply.status == 403
    assert openai_body(reply) == {"message": "Origin not allowed",
                                  "type": "invalid_request_error", "param": None,
                                  "code": "origin_denied"}
    native_reply = server.request("POST", "/v1/transcribe", CLIP, evil)
    assert native_reply.json() == {"code": "origin_denied", "error": "Origin not allowed"}


def test_routing_preflight_and_metrics(server: ServerProcess) -> None:
    reply = server.request("OPTIONS", PATH, headers={"Origin": "http://localhost:5173"})
    assert reply.status == 204
    assert reply.headers["access-control-allow-origin"] == "http://localhost:5173"
    reply = server.request("GET", PATH)
    assert reply.status == 405 and reply.headers["allow"] == "POST,OPTIONS"
    assert post(server, form([])).status == 200
    metrics = server.request("GET", "/metrics").body.decode()
    assert ('gigastt_http_requests_total{method="POST",path="/v1/audio/transcriptions",'
            'status="200"}') in metrics
    assert 'path="/v1/audio/transcriptions",status="405"' in metrics


def test_client_gone_mid_stream_frees_the_slot(server: ServerProcess) -> None:
    audio = wav_bytes(tone_sequence((HELLO + HOW) * 14, gap_s=0.3))  # several windows
    body = form([("stream", "true")], file=audio)
    head = (f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n").encode()
    for _ in range(3):
        with server.connect() as sock:
            sock.sendall(head + body)
            sock.settimeout(30)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
            # Closed with a reset, as a killed client would.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        assert pool_idle(server)


def test_keep_alive_after_each_answer(server: ServerProcess) -> None:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
        for fields in ([("response_format", "text")], [("language", "en")], [("stream", "true")]):
            conn.request("POST", PATH, form(fields), headers)
            reply = conn.getresponse()
            reply.read()
            assert reply.status in (200, 400) and not reply.will_close
    finally:
        conn.close()


# --- the pipeline's refusals on this route ------------------------------------------------------


def test_pool_timeout_and_body_budget_are_503_in_openai_shape(tone_model: Path) -> None:
    proc = ServerProcess(tone_model, "--pool-size", "1", "--pool-checkout-timeout-secs", "1",
                         "--body-limit-bytes", "1048576", "--max-inflight-body-mb", "1")
    try:
        async def hold_the_pool() -> Any:
            ws, _ = await open_session(proc)  # the only slot
            try:
                return await asyncio.to_thread(post, proc, form([]))
            finally:
                await ws.close()

        reply = asyncio.run(hold_the_pool())
        assert reply.status == 503 and reply.headers["retry-after"] == "1"
        assert openai_body(reply) == {"message": "Server busy, try again later",
                                      "type": "server_error", "param": None, "code": "timeout"}
        with pytest.raises(openai.InternalServerError):
            asyncio.run(_sdk_while_pool_held(proc))

        with proc.connect() as holder:  # declares a full-size body and sends none of it
            holder.sendall(f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n"
                           f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n"
                           .encode())
            time.sleep(0.3)
            busy = post(proc, form([]))
        assert busy.status == 503 and busy.headers["retry-after"] == "1"
        assert busy.headers["connection"] == "close"
        assert openai_body(busy)["code"] == "server_busy"
        assert pool_idle(proc)
        assert post(proc, form([])).status == 200
    finally:
        assert proc.stop() == 0
    assert "Traceback" not in proc.log


async def _sdk_while_pool_held(proc: ServerProcess) -> None:
    ws, _ = await open_session(proc)
    try:
        await asyncio.to_thread(client(proc).audio.transcriptions.create,
                                file=("clip.wav", CLIP), model="whisper-1")
    finally:
        await ws.close()


def test_rate_limit_is_429_in_openai_shape(tone_model: Path) -> None:
    proc = ServerProcess(tone_model, "--rate-limit-per-minute", "30", "--rate-limit-burst", "1")
    try:
        assert post(proc, form([])).status == 200
        reply = post(proc, form([]))
        assert reply.status == 429 and reply.headers["retry-after"].isdigit()
        assert openai_body(reply) == {"message": "Too many requests", "type": "rate_limit_error",
                                      "param": None, "code": "rate_limited"}
        with pytest.raises(openai.RateLimitError):
            client(proc).audio.transcriptions.create(file=("clip.wav", CLIP), model="whisper-1")
    finally:
        assert proc.stop() == 0


def test_a_stream_runs_to_its_end_during_a_drain(tone_model: Path) -> None:
    """Like a json answer, a stream is a request in flight: SIGTERM lets it finish."""
    proc = ServerProcess(tone_model)
    try:
        body = form([("stream", "true")],
                    file=wav_bytes(tone_sequence((HELLO + HOW) * 60, gap_s=0.3)))
        head = (f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n").encode()
        with proc.connect() as sock:
            sock.sendall(head + body)
            first = sock.recv(65536)
            assert first.startswith(b"HTTP/1.1 200 ")
            proc.signal(signal.SIGTERM)
            data = first + raw_exchange(sock, b"", until_close=True, timeout=60)
        assert data.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
    finally:
        assert proc.stop() == 0
    assert "Drain complete: all tracked tasks finished" in proc.log
