"""WebSocket and SSE end to end against a real server (docs/api.md; D7, D13, D20).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed

from gigastt.engine.audio import resample
from gigastt.testing.audio import silence, speech_like, tone_sequence, wav_bytes
from tests.serverproc import ServerProcess, pool_idle, serving
from tests.wsclient import (
    close_code,
    collect,
    frame,
    open_session,
    pcm16,
    raw_upgrade,
    recv_until_final,
    stream,
)

HELLO = ["▁При", "вет", ",", "▁мир", "."]
HOW = ["▁как", "▁де", "ла", "?"]


@pytest.fixture(scope="module")
def server(tone_model: Path) -> Iterator[ServerProcess]:
    yield from serving(tone_model, absent=("Traceback", "connection error"))


def healthy(server: ServerProcess) -> bool:
    return server.request("GET", "/health").status == 200


def types(messages: list[dict[str, Any]]) -> list[str]:
    return [m["type"] for m in messages]


# --- sessions --------------------------------------------------------------------------------


def test_w1_ready(server: ServerProcess) -> None:
    async def main() -> dict[str, Any]:
        ws, ready = await open_session(server)
        await ws.close()
        return ready

    ready = asyncio.run(main())
    assert list(ready) == ["type", "model", "sample_rate", "version", "supported_rates",
                           "min_protocol_version", "max_session_secs", "idle_timeout_secs"]
    assert ready["version"] == "1.0" and ready["sample_rate"] == 48000
    assert ready["min_protocol_version"] == "1.0"
    assert (ready["max_session_secs"], ready["idle_timeout_secs"]) == (3600, 300)  # defaults
    assert "gigaam" in ready["model"] and ready["supported_rates"] == [8000, 16000, 24000,
                                                                        44100, 48000]


def test_w2_silence_then_stop(server: ServerProcess) -> None:
    async def main() -> tuple[list[dict[str, Any]], int | None]:
        ws, _ = await open_session(server)
        data = pcm16(silence(2.0, 48000))
        for start in range(0, len(data), 9600):
            await ws.send(data[start : start + 9600])
        await ws.send(json.dumps({"type": "stop"}))
        messages = await collect(ws)
        return messages, ws.close_code

    messages, code = asyncio.run(main())
    assert types(messages) == ["final"] and messages[-1]["text"] == ""
    assert list(messages[-1]) == ["type", "text", "words", "is_final", "timestamp"]
    assert messages[-1]["is_final"] is True and code == 1000


def test_w3_stop_right_after_ready(server: ServerProcess) -> None:
    async def main() -> list[dict[str, Any]]:
        ws, _ = await open_session(server)
        await ws.send(json.dumps({"type": "stop"}))
        return await collect(ws)

    assert asyncio.run(main()) == [
        {"type": "final", "text": "", "words": [], "is_final": True,
         "timestamp": pytest.approx(time.time(), abs=30)}]


def test_w4_configure_16k(server: ServerProcess) -> None:
    async def main() -> list[dict[str, Any]]:
        ws, _ = await open_session(server)
        await ws.send(json.dumps({"type": "configure", "sample_rate": 16000}))
        await ws.send(bytes(32000))
        await ws.send(json.dumps({"type": "stop"}))
        return await collect(ws)

    messages = asyncio.run(main())
    assert "error" not in types(messages) and types(messages)[-1] == "final"


@pytest.mark.parametrize("rate", [7000, 16000.0, "16000", -1, 2**32])
def test_w5_invalid_sample_rate(server: ServerProcess, rate: Any) -> None:
    async def main() -> list[dict[str, Any]]:
        ws, _ = await open_session(server)
        await ws.send(json.dumps({"type": "configure", "sample_rate": rate}))
        await ws.send(json.dumps({"type": "stop"}))
        return await collect(ws)

    messages = asyncio.run(main())
    if rate == 7000:
        assert messages[0] == {
            "type": "error", "code": "invalid_sample_rate",
            "message": "Unsupported sample rate: 7000Hz. Supported: [8000, 16000, 24000, 44100,"
                       " 48000]"}
        assert types(messages) == ["error", "final"]
    else:  # wrong JSON types are ignored silently (docs/api.md "GET /v1/ws")
        assert types(messages) == ["final"]


def test_w6_configure_too_late(server: ServerProcess) -> None:
    async def main() -> list[dict[str, Any]]:
        ws, _ = await open_session(server)
        await ws.send(bytes(9600))
        await ws.send(json.dumps({"type": "configure", "sample_rate": 16000}))
        first = json.loads(await asyncio.wait_for(ws.recv(), 5))
        await ws.send(json.dumps({"type": "stop"}))
        return [first, *await collect(ws)]

    messages = asyncio.run(main())
    assert messages[0] == {"type": "error", "code": "configure_too_late",
                           "message": "Configure must be sent before first audio frame"}


def test_w7_garbage_text_is_ignored(server: ServerProcess) -> None:
    async def main() -> list[dict[str, Any]]:
        ws, _ = await open_session(server)
        for text in ("not json at all {{", "[]", '{"type":"Stop"}', '{"type":"stop","type":1}',
                     "\u00e9" * 100):
            await ws.send(text)
        await ws.send(json.dumps({"type": "stop"}))
        return await collect(ws, timeout=10)

    assert types(asyncio.run(main())) == ["final"]


def test_w8_client_vanishes_then_a_new_client_connects(server: ServerProcess) -> None:
    sock, _ = raw_upgrade(server)
    sock.sendall(frame(0x2, pcm16(speech_like(0.5, rate=48000))))
    sock.close()
    time.sleep(0.2)

    async def main() -> None:
        ws, _ = await open_session(server)
        await ws.close()

    asyncio.run(main())
    assert pool_idle(server)


def test_w9_four_concurrent_clients(server: ServerProcess) -> None:
    async def one() -> dict[str, Any]:
        ws, _ = await open_session(server)
        await ws.send(json.dumps({"type": "stop"}))
        message = json.loads(await asyncio.wait_for(ws.recv(), 10))
        await ws.close()
        return message

    async def main() -> list[dict[str, Any]]:
        return await asyncio.gather(*(one() for _ in range(4)))

    started = time.monotonic()
    assert types(asyncio.run(main())) == ["final"] * 4
    assert time.monotonic() - started < 30


# --- D13: endpoint finals whatever the frame size, equal to the file transcript ----------------


@pytest.mark.parametrize("frame_ms", [20, 100, 1000])
def test_endpoint_final_before_stop_for_any_frame_size(server: ServerProcess,
                                                       frame_ms: int) -> None:
    audio16 = np.concatenate([tone_sequence(HELLO), silence(1.5), tone_sequence(HOW),
                              silence(1.5)])
    audio = resample(audio16, 16000, 48000)
    messages, code = asyncio.run(stream(server, audio, 48 * frame_ms, rate=48000))
    finals = [m for m in messages if m["type"] == "final"]
    assert [f["text"] for f in finals[:2]] == ["Привет, мир.", "как дела?"]
    assert finals[-1]["text"] == "" and code == 1000  # the stop-final: nothing was pending
    file = server.request("POST", "/v1/transcribe", wav_bytes(audio, 48000)).json()
    assert isinstance(file, dict)
    assert " ".join(f["text"] for f in finals if f["text"]) == file["text"]
    streamed = [(w["word"], w["start"]) for f in finals for w in f["words"]]
    assert streamed == [(w["word"], w["start"]) for w in file["words"]]


def test_final_on_stop_contains_pending_words_and_timestamps_are_stream_relative(
        server: ServerProcess) -> None:
    audio = np.concatenate([silence(3.0), tone_sequence(HELLO, tail_s=0.1)])
    messages, code = asyncio.run(stream(server, audio, 1600))
    final = messages[-1]
    assert final["type"] == "final" and final["text"] == "Привет, мир." and code == 1000
    assert final["words"][0]["start"] == pytest.approx(3.32)
    assert all(m["type"] == "partial" for m in messages[:-1])


def test_a_client_far_ahead_of_real_time_loses_nothing(server: ServerProcess) -> None:
    # A minute of speech with no endpoint pause, sent at once: the server catches up in passes of
    # at most 20.5 s, each ending in a final; together they hold the file's words, at its times.
    audio = tone_sequence((HELLO + HOW) * 14, tone_s=0.2, gap_s=0.3, lead_s=0.3)
    assert len(audio) > 60 * 16000
    messages, code = asyncio.run(stream(server, audio, 16000))
    finals = [m for m in messages if m["type"] == "final"]
    assert code == 1000 and len(finals) >= 4
    file = server.request("POST", "/v1/transcribe", wav_bytes(audio, 16000)).json()
    assert isinstance(file, dict)
    assert "".join(f["text"] for f in finals).replace(" ", "") == file["text"].replace(" ", "")
    # Cuts (the stream's and the file's windows) may split a word in two, so compare times, not
    # words: every streamed word starts inside a word of the file.
    spans = [(round(w["start"], 3), round(w["end"], 3)) for w in file["words"]]
    for start in (round(w["start"], 3) for f in finals for w in f["words"]):
        assert any(a <= start <= b for a, b in spans), start
    assert healthy(server)


def test_a_client_far_ahead_of_real_time_is_held_back(server: ServerProcess) -> None:
    # Back-pressure: once a whole pass of audio waits, the server stops reading the socket, so
    # what a fast client sends ahead waits in TCP buffers, not in the server's memory. After a
    # warm-up that reaches that bound, 400 s more (25.6 MB as float32) barely move its peak.
    def peak_kib() -> int:
        status = Path(f"/proc/{server.proc.pid}/status").read_text(encoding="ascii")
        return int(status.split("VmHWM:")[1].split()[0])

    noise = np.random.default_rng(7).standard_normal(400 * 16000).astype(np.float32) * 0.1
    _, code = asyncio.run(stream(server, noise[: 120 * 16000], 16000))
    assert code == 1000
    before = peak_kib()
    _, code = asyncio.run(stream(server, noise, 16000))
    assert code == 1000
    # Measured: 0-6 MB with back-pressure, 58-68 MB without.
    assert (peak_kib() - before) * 1024 < noise.nbytes / 2
    assert healthy(server)


def test_odd_byte_frames_are_carried(server: ServerProcess) -> None:
    data = pcm16(np.concatenate([tone_sequence(HELLO), silence(1.0)]))

    async def main() -> list[dict[str, Any]]:
        ws, _ = await open_session(server)
        await ws.send(json.dumps({"type": "configure", "sample_rate": 16000}))
        for start in range(0, len(data), 1001):
            await ws.send(data[start : start + 1001])
        await ws.send(json.dumps({"type": "stop"}))
        return await collect(ws)

    finals = [m["text"] for m in asyncio.run(main()) if m["type"] == "final"]
    assert finals[0] == "Привет, мир."


def test_first_frame_in_the_same_write_as_the_upgrade(server: ServerProcess) -> None:
    configure = frame(0x1, json.dumps({"type": "configure", "sample_rate": 7000}).encode())
    sock, frames = raw_upgrade(server, first=configure)
    with sock:
        opcode, payload = frames.next() or (0, b"")
        assert opcode == 0x1 and json.loads(payload)["type"] == "ready"
        opcode, payload = frames.next() or (0, b"")
        assert json.loads(payload)["code"] == "invalid_sample_rate"


# --- D7 protocol abuse: each closes with its code and leaves the server healthy ----------------


def _abuse(server: ServerProcess, data: bytes, *, repeat: int = 1) -> int | None:
    sock, frames = raw_upgrade(server)
    with sock:
        assert frames.next() is not None  # ready
        try:
            for _ in range(repeat):
                sock.sendall(data)
        except OSError:
            pass
        while (got := frames.next()) is not None:
            opcode, payload = got
            if opcode == 0x8:
                return close_code(payload)
            assert opcode in (0x9, 0xA), f"unexpected opcode {opcode}: {payload[:80]!r}"
    return None


@pytest.mark.parametrize(("name", "data", "repeat", "code"), [
    ("invalid UTF-8 text", frame(0x1, b"\xff\xfe{}"), 1, 1007),
    ("unmasked frame", frame(0x2, b"abcd", mask=False), 1, 1002),
    ("600 KiB frame", frame(0x2, bytes(600 * 1024)), 1, 1009),
    ("ping flood", frame(0x9, b"x"), 500, 1008),
    ("1001 empty frames", frame(0x2, b""), 1001, 1008),
    ("fragmented message over the cap", frame(0x2, bytes(400 * 1024), fin=False)
     + frame(0x0, bytes(400 * 1024)), 1, 1009),
])
def test_protocol_abuse(server: ServerProcess, name: str, data: bytes, repeat: int,
                        code: int) -> None:
    assert _abuse(server, data, repeat=repeat) == code, name
    assert healthy(server) and pool_idle(server)


def test_frame_exactly_at_the_cap_is_accepted(server: ServerProcess) -> None:
    async def main() -> list[dict[str, Any]]:
        ws, _ = await open_session(server)
        await ws.send(bytes(524288))
        await ws.send(json.dumps({"type": "stop"}))
        return await collect(ws)

    assert types(asyncio.run(main()))[-1] == "final"


def test_client_close_is_echoed(server: ServerProcess) -> None:
    async def main() -> int | None:
        ws, _ = await open_session(server)
        await ws.close(4000, "bye")
        return ws.close_code

    assert asyncio.run(main()) == 4000


# --- pool, idle, ping (E3, E5, L3, D20) ----------------------------------------------------


def test_e3_fifth_client_waits_without_ready_and_gets_it_when_a_slot_frees(
        server: ServerProcess) -> None:
    async def main() -> None:
        held = [(await open_session(server))[0] for _ in range(4)]
        from websockets.asyncio.client import connect

        fifth = await connect(f"ws://{server.host}:{server.port}/v1/ws")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(fifth.recv(), 3)
        await held[0].send(json.dumps({"type": "stop"}))
        await collect(held[0])
        ready = json.loads(await asyncio.wait_for(fifth.recv(), 5))
        assert ready["type"] == "ready"
        for ws in [*held[1:], fifth]:
            await ws.close()

    asyncio.run(main())
    assert pool_idle(server)


def test_l3_twenty_clients_pool_four(server: ServerProcess) -> None:
    async def one() -> float:
        started = time.monotonic()
        ws, _ = await open_session(server)
        ready_after = time.monotonic() - started
        await ws.send(json.dumps({"type": "stop"}))
        messages = await recv_until_final(ws, timeout=25)
        assert messages[-1]["type"] == "final"
        await ws.close()
        return ready_after

    async def main() -> list[float]:
        return await asyncio.gather(*(one() for _ in range(20)))

    started = time.monotonic()
    waits = asyncio.run(main())
    assert max(waits) < 5 and time.monotonic() - started < 30
    assert pool_idle(server)


def test_l1_four_clients_stream_silence(server: ServerProcess) -> None:
    async def one() -> list[dict[str, Any]]:
        messages, _ = await stream(server, silence(5.0, 48000), 4800, rate=48000)
        return messages

    async def main() -> list[list[dict[str, Any]]]:
        return await asyncio.gather(*(one() for _ in range(4)))

    for messages in asyncio.run(main()):
        assert types(messages) == ["final"]


def test_e4_rest_waits_then_times_out_while_ws_hold_the_pool(tone_model: Path) -> None:
    proc = ServerProcess(tone_model, "--pool-size", "1", "--pool-checkout-timeout-secs", "1")
    try:
        async def main() -> None:
            ws, _ = await open_session(proc)
            started = time.monotonic()
            reply = await asyncio.to_thread(proc.request, "POST", "/v1/transcribe",
                                            wav_bytes(silence(1.0)))
            assert reply.status == 503 and reply.headers["retry-after"] == "1"
            assert reply.json() == {"code": "timeout", "error": "Server busy, try again later",
                                    "retry_after_ms": 1000}
            assert 0.9 < time.monotonic() - started < 10
            fifth = await asyncio.wait_for(
                __import__("websockets.asyncio.client", fromlist=["connect"]).connect(
                    f"ws://{proc.host}:{proc.port}/v1/ws"), 5)
            error = json.loads(await asyncio.wait_for(fifth.recv(), 5))
            assert error == {"type": "error", "message": "Server busy, try again later",
                             "code": "timeout", "retry_after_ms": 1000}
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(fifth.recv(), 5)
            assert fifth.close_code == 1013
            await ws.close()

        asyncio.run(main())
        assert pool_idle(proc)
        assert proc.request("POST", "/v1/transcribe", wav_bytes(silence(1.0))).status == 200
    finally:
        assert proc.stop() == 0


def test_e5_idle_timeout_sends_final_then_close_1000(tone_model: Path) -> None:
    proc = ServerProcess(tone_model, "--idle-timeout-secs", "2", "--ws-ping-secs", "1")
    try:
        async def main() -> tuple[list[dict[str, Any]], int | None, float]:
            started = time.monotonic()
            ws, _ = await open_session(proc)
            messages = await collect(ws, timeout=10)
            return messages, ws.close_code, time.monotonic() - started

        messages, code, elapsed = asyncio.run(main())
        assert types(messages) == ["final"] and code == 1000
        assert 1.5 < elapsed < 10  # pings (1 s) and pongs did not keep it alive
    finally:
        assert proc.stop() == 0


def test_server_pings_keep_quiet_sessions_observable(tone_model: Path) -> None:
    proc = ServerProcess(tone_model, "--ws-ping-secs", "1")
    try:
        sock, frames = raw_upgrade(proc)
        with sock:
            assert frames.next() is not None  # ready
            got = frames.next()
            assert got is not None and got[0] == 0x9
    finally:
        assert proc.stop() == 0


# --- SSE ------------------------------------------------------------------------------------


def _sse_events(body: bytes) -> list[dict[str, Any]]:
    events = []
    for block in body.decode().split("\n\n"):
        if block.startswith("data: "):
            events.append(json.loads(block[6:]))
        else:
            assert block in ("", ": "), block
    return events


def test_r5_r7_sse_streams_events(server: ServerProcess) -> None:
    audio = np.concatenate([tone_sequence(HELLO), silence(1.0), tone_sequence(HOW),
                            silence(5.0)])
    reply = server.request("POST", "/v1/transcribe/stream", wav_bytes(audio))
    assert reply.status == 200 and reply.headers["content-type"] == "text/event-stream"
    assert reply.headers["cache-control"] == "no-cache"
    events = _sse_events(reply.body)
    assert {e["type"] for e in events} <= {"partial", "final"}
    finals = [e for e in events if e["type"] == "final"]
    assert [f["text"] for f in finals] == ["Привет, мир.", "как дела?"]
    assert list(finals[0]) == ["text", "timestamp", "type", "words"]
    assert list(finals[0]["words"][0]) == ["confidence", "end", "start", "word"]


def test_sse_of_silence_is_an_empty_200(server: ServerProcess) -> None:
    reply = server.request("POST", "/v1/transcribe/stream", wav_bytes(silence(3.0)))
    assert reply.status == 200 and reply.body == b""


def test_r6_sse_empty_body_and_undecodable(server: ServerProcess) -> None:
    assert server.request("POST", "/v1/transcribe/stream", b"").status == 400
    bad = server.request("POST", "/v1/transcribe/stream", b"garbage" * 100)
    assert bad.status == 422 and bad.json() == {
        "code": "invalid_audio",
        "error": "Failed to decode audio file. Check format (WAV, MP3, M4A, OGG, FLAC supported)."}


def test_r8_sse_client_disconnects_and_frees_its_slot(server: ServerProcess) -> None:
    audio = np.concatenate([tone_sequence(HELLO), silence(1.0)] * 20)
    body = wav_bytes(audio)
    sock = server.connect()
    sock.sendall(f"POST /v1/transcribe/stream HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}"
                 f"\r\n\r\n".encode() + body)
    assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
    sock.close()
    time.sleep(0.5)
    assert healthy(server) and pool_idle(server, timeout=20)
