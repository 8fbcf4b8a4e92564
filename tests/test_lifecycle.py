"""Real signals against a real server: SIGTERM/SIGINT drain, SIGHUP reload (D1, D12).
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from gigastt.engine.audio import resample
from gigastt.testing.audio import silence, tone_sequence, wav_bytes
from tests.conftest import long_speech
from tests.serverproc import ServerProcess
from tests.wsclient import collect, open_session, pcm16

HELLO = ["▁При", "вет", ",", "▁мир", "."]


def timed_stop(proc: ServerProcess, sig: int = signal.SIGTERM) -> tuple[int, float]:
    started = time.monotonic()
    code = proc.stop(sig)
    return code, time.monotonic() - started


@pytest.fixture(scope="module")
def medium_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wider encoder, so that long files keep the executor busy for a few seconds."""
    from gigastt.testing.models import write_small_model

    return write_small_model(tmp_path_factory.mktemp("medium"), d_model=256, layers=4)


def test_s1_ws_session_gets_final_and_1001_on_sigterm(tone_model: Path) -> None:
    proc = ServerProcess(tone_model)

    async def main() -> tuple[list[dict[str, Any]], int | None]:
        ws, _ = await open_session(proc)
        await ws.send(pcm16(silence(1.0, 48000)))
        await asyncio.sleep(0.3)
        proc.signal(signal.SIGTERM)
        messages = await collect(ws, timeout=15)
        return messages, ws.close_code

    messages, code = asyncio.run(main())
    assert [m["type"] for m in messages] == ["final"] and code == 1001
    rc, took = timed_stop(proc)
    assert rc == 0 and took < 15
    assert "Shutting down server (SIGTERM)" in proc.log


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_s3_mid_utterance_final_is_the_transcript_of_the_audio_so_far(
        tone_model: Path, sig: int) -> None:
    proc = ServerProcess(tone_model)
    audio = resample(tone_sequence(HELLO, tail_s=0.05), 16000, 48000)
    prefix = audio[: int(len(audio) * 0.55)]  # "Привет," and part of the next tones
    try:
        expected = proc.request("POST", "/v1/transcribe", wav_bytes(prefix, 48000)).json()
        assert isinstance(expected, dict) and expected["text"]

        async def main() -> tuple[list[dict[str, Any]], int | None, float]:
            ws, _ = await open_session(proc)
            data = pcm16(prefix)
            for start in range(0, len(data), 9600):
                await ws.send(data[start : start + 9600])
            await asyncio.sleep(0.2)
            started = time.monotonic()
            proc.signal(sig)
            messages = await collect(ws, timeout=15)
            return messages, ws.close_code, time.monotonic() - started

        messages, code, took = asyncio.run(main())
        assert messages[-1]["type"] == "final" and code == 1001 and took < 15
        assert messages[-1]["text"] == expected["text"]
        assert [w["start"] for w in messages[-1]["words"]] == [
            w["start"] for w in expected["words"]]
    finally:
        rc, took = timed_stop(proc)
    assert rc == 0


def test_s2_s4_sse_stream_ends_cleanly_on_sigterm(small_model: Path) -> None:
    proc = ServerProcess(small_model)
    body = wav_bytes(long_speech(60.0, seed=5))
    sock = proc.connect(timeout=20)
    sock.sendall(f"POST /v1/transcribe/stream HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}"
                 "\r\n\r\n".encode() + body)
    head = sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 200 ")
    time.sleep(0.2)
    started = time.monotonic()
    proc.signal(signal.SIGTERM)
    data = head
    while chunk := sock.recv(65536):
        data += chunk
    took = time.monotonic() - started
    sock.close()
    assert took < 15
    assert data.endswith(b"0\r\n\r\n")  # the chunked body was terminated, not cut
    assert b'"type":"error"' not in data
    assert proc.stop() == 0


def test_s5_session_cap_sends_error_final_then_1008(tone_model: Path) -> None:
    proc = ServerProcess(tone_model, "--max-session-secs", "3", "--idle-timeout-secs", "1")
    try:
        async def main() -> tuple[list[dict[str, Any]], int | None]:
            ws, _ = await open_session(proc)
            messages: list[dict[str, Any]] = []

            async def sender() -> None:
                for _ in range(60):
                    await ws.send(bytes(1920))
                    await asyncio.sleep(0.25)

            task = asyncio.ensure_future(sender())
            try:
                messages = await collect(ws, timeout=15)
            finally:
                task.cancel()
            return messages, ws.close_code

        messages, code = asyncio.run(main())
        assert [m["type"] for m in messages] == ["error", "final"]
        assert messages[0]["code"] == "max_session_duration_exceeded"
        assert code == 1008
    finally:
        assert proc.stop() == 0


def test_max_session_zero_means_no_cap(tone_model: Path) -> None:
    proc = ServerProcess(tone_model, "--max-session-secs", "0")
    try:
        async def main() -> list[dict[str, Any]]:
            ws, _ = await open_session(proc)
            await asyncio.sleep(1.0)
            await ws.send(json.dumps({"type": "stop"}))
            return await collect(ws)

        assert [m["type"] for m in asyncio.run(main())] == ["final"]
    finally:
        assert proc.stop() == 0


def test_s6_queued_request_gets_pool_closed_and_occupiers_complete(medium_model: Path) -> None:
    proc = ServerProcess(medium_model, "--threads", "1", "--shutdown-drain-secs", "60")
    body = wav_bytes(long_speech(120.0, seed=2))
    results: dict[str, Any] = {}

    def post(name: str) -> None:
        reply = proc.request("POST", "/v1/transcribe", body, timeout=120)
        results[name] = (reply.status, reply.json())

    occupiers = [threading.Thread(target=post, args=(f"o{i}",)) for i in range(4)]
    for t in occupiers:
        t.start()
    time.sleep(0.5)
    fifth = threading.Thread(target=post, args=("fifth",))
    fifth.start()
    time.sleep(0.5)
    assert proc.request("GET", "/ready").json()["reason"] == "pool_exhausted"  # type: ignore[index]
    proc.signal(signal.SIGTERM)
    fifth.join(10)
    assert results["fifth"] == (503, {"code": "pool_closed", "error": "Server is shutting down"})
    for t in occupiers:
        t.join(120)
    assert all(results[f"o{i}"][0] == 200 for i in range(4))
    assert proc.proc.wait(30) == 0
    assert "Drain complete" in proc.log


def test_new_upgrades_and_ready_during_drain(tone_model: Path) -> None:
    proc = ServerProcess(tone_model, "--shutdown-drain-secs", "5")
    try:
        async def main() -> None:
            ws, _ = await open_session(proc)  # keeps the drain busy
            conn = proc.connect()
            # A request under way when the drain starts is answered (idle ones are closed).
            conn.sendall(b"GET /ready HTTP/1.1\r\n")
            await asyncio.sleep(0.2)
            proc.signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            conn.sendall(b"Host: x\r\n\r\n")
            data = conn.recv(65536)
            assert b" 503 " in data.split(b"\r\n")[0]
            assert b'"reason":"shutting_down"' in data and b'"pool_available":0' in data
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            assert ws.close_code == 1001
            conn.close()

        asyncio.run(main())
    finally:
        assert proc.stop() == 0


def test_second_signal_is_ignored_and_window_expiry_is_logged(medium_model: Path) -> None:
    proc = ServerProcess(medium_model, "--threads", "1", "--shutdown-drain-secs", "1")
    body = wav_bytes(long_speech(600.0, seed=1))
    done: dict[str, Any] = {}

    def post() -> None:
        try:
            done["reply"] = proc.request("POST", "/v1/transcribe", body, timeout=60)
        except Exception as exc:  # the server closes it when the window ends
            done["error"] = exc

    worker = threading.Thread(target=post)
    worker.start()
    time.sleep(1.5)
    started = time.monotonic()
    proc.signal(signal.SIGTERM)
    time.sleep(0.2)
    proc.signal(signal.SIGTERM)
    rc = proc.proc.wait(30)
    took = time.monotonic() - started
    worker.join(30)
    assert rc == 0 and took < 10
    assert "during drain ignored" in proc.log
    assert "Drain window expired" in proc.log
    assert "error" in done  # the 600 s upload outlived the 1 s window: its connection was closed


# --- SIGHUP reload (D12) ----------------------------------------------------------------------


def test_sighup_reload_changes_limits_but_keeps_startup_flags(tone_model: Path,
                                                              tmp_path: Path) -> None:
    config = tmp_path / "gigastt.toml"
    config.write_text("idle_timeout_secs = 300\n")
    proc = ServerProcess(tone_model, "--config", str(config), "--max-session-secs", "100")
    try:
        async def main() -> None:
            live, _ = await open_session(proc)  # a session that is live during the reload
            assert all(proc.request("GET", "/v1/models").status == 200 for _ in range(3))
            config.write_text("idle_timeout_secs = 2\nrate_limit_per_minute = 30\n"
                              "rate_limit_burst = 1\nmax_session_secs = 5\n")
            proc.signal(signal.SIGHUP)
            await asyncio.sleep(0.5)
            assert "limits now:" in proc.log and "max_session_secs=100" in proc.log
            assert "idle_timeout_secs=2" in proc.log
            assert proc.request("GET", "/v1/models").status == 200
            assert proc.request("GET", "/v1/models").status == 429  # limiter switched on
            await asyncio.sleep(2.1)  # 30 rpm: one token every 2 s, and the upgrade takes one
            started = time.monotonic()
            fresh, _ = await open_session(proc)
            assert [m["type"] for m in await collect(fresh, timeout=10)] == ["final"]
            assert fresh.close_code == 1000 and time.monotonic() - started < 6  # new idle
            await live.send(json.dumps({"type": "stop"}))  # the live one kept its old idle
            assert [m["type"] for m in await collect(live)] == ["final"]

            config.write_text("idle_timeout_secs = 'broken'\n")
            proc.signal(signal.SIGHUP)
            await asyncio.sleep(0.5)
            assert "config reload failed, keeping the old limits" in proc.log
            statuses = [proc.request("GET", "/v1/models").status for _ in range(2)]
            assert statuses[-1] == 429  # the limiter is still on, with burst 1

        asyncio.run(main())
    finally:
        assert proc.stop() == 0


def test_sighup_without_config_is_ignored(tone_model: Path) -> None:
    proc = ServerProcess(tone_model)
    proc.signal(signal.SIGHUP)
    time.sleep(0.3)
    assert proc.request("GET", "/health").status == 200
    assert "No config file specified, ignoring SIGHUP" in proc.log
    assert proc.stop() == 0


