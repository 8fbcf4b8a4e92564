"""Live streams beyond capacity: twice the measured capacity of real-time sessions of continuous
speech for 40 s against one server; nothing is lost, nobody starves, everything returns to idle.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from gigastt.testing.audio import tone_sequence
from tests.serverproc import ServerProcess, pool_idle, scrape_metrics
from tests.wsclient import collect, open_session, pcm16

HELLO = ["▁При", "вет", ",", "▁мир", "."]
HOW = ["▁как", "▁де", "ла", "?"]
PHRASES = {"Привет,мир.": HELLO, "какдела?": HOW}
# Past one 20 s utterance cap, so each session has a cap cut and the final that `stop` asks for;
# long enough that a session held back 8 s per pass still gets 5 partials.
SECONDS = 40.0
FRAME = 1600  # 100 ms at 16 kHz


def continuous_speech(first: int) -> tuple[np.ndarray, str]:
    """Phrases joined by 0.2 s gaps (shorter than the 0.6 s endpoint silence), ``SECONDS`` long:
    utterances end at the 20 s cap and at ``stop``. Returns the audio and its text without spaces.
    """
    parts: list[np.ndarray] = []
    text = ""
    total, k = 0, first
    names = list(PHRASES)
    while total < SECONDS * 16000:
        name = names[k % 2]
        parts.append(tone_sequence(PHRASES[name], tone_s=0.2, gap_s=0.05, lead_s=0.2, tail_s=0.0))
        text += name
        total += parts[-1].shape[0]
        k += 1
    return np.concatenate(parts), text


async def live_session(server: ServerProcess, audio: np.ndarray, start_at: float,
                       ) -> tuple[list[dict[str, Any]], int | None]:
    """One real-time client under protocol 1.2: 100 ms frames on a fixed schedule, then stop."""
    # No keepalive pings: a session held back by the server waits with its socket unread, so a
    # ping would wait behind its audio too (docs/api.md, back-pressure).
    ws, _ = await open_session(server, ping_interval=None)
    await ws.send(json.dumps({"type": "configure", "sample_rate": 16000,
                              "protocol_version": "1.2"}))
    received: list[dict[str, Any]] = []

    async def receive() -> None:
        received.extend(await collect(ws, timeout=120))

    reader = asyncio.ensure_future(receive())
    data = pcm16(audio)
    loop = asyncio.get_running_loop()
    for k, offset in enumerate(range(0, len(data), FRAME * 2)):
        delay = start_at + k * FRAME / 16000 - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await ws.send(data[offset : offset + FRAME * 2])  # held back when the server is behind
    await ws.send(json.dumps({"type": "stop"}))
    await reader
    await ws.wait_closed()
    return received, ws.close_code


def check_session(messages: list[dict[str, Any]], text: str, close_code: int | None) -> None:
    """Partials came, the finals hold the whole text, commits only grew and held (D26)."""
    assert close_code == 1000
    assert [m for m in messages if m["type"] == "error"] == []
    assert sum(m["type"] == "partial" for m in messages) >= 5
    finals = [m for m in messages if m["type"] == "final"]
    assert finals and finals[-1]["endpoint_reason"] == "stop"
    assert {f["endpoint_reason"] for f in finals[:-1]} == {"cap"}  # at least one cap cut
    # A cap cut may fall between two tokens of a word: compare without spaces.
    assert "".join(f["text"] for f in finals).replace(" ", "") == text
    committed = ""
    for message in messages:
        assert message["text"].startswith(committed), (committed, message["text"])
        if message["type"] == "final":
            committed = ""
        else:
            assert message["committed"].startswith(committed)
            committed = message["committed"]


def test_twice_the_capacity_of_continuous_speech(tone_model: Path) -> None:
    probe = ServerProcess(tone_model, "--pool-size", "auto")
    try:
        capacity = probe.request("GET", "/v1/models").json()["capacity"]
    finally:
        assert probe.stop() == 0
    assert isinstance(capacity, int) and capacity >= 1
    sessions = 2 * capacity
    server = ServerProcess(tone_model, "--metrics", "--pool-size", str(sessions),
                           "--max-connections", str(sessions + 16))
    try:
        streams = [continuous_speech(k) for k in range(sessions)]

        async def run_all() -> list[tuple[list[dict[str, Any]], int | None]]:
            start = asyncio.get_running_loop().time() + 1.0
            return await asyncio.gather(*(
                live_session(server, audio, start + k * 0.1 / sessions)
                for k, (audio, _) in enumerate(streams)))

        results = asyncio.run(run_all())
        for (messages, code), (_, text) in zip(results, streams, strict=True):
            check_session(messages, text, code)
        # Back to idle: every slot free, no live session, no lag, every second of audio counted.
        assert pool_idle(server)
        deadline = time.monotonic() + 5
        while (after := scrape_metrics(server))["gigastt_ws_active_connections"] and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        assert after["gigastt_ws_active_connections"] == 0
        assert after["gigastt_pool_utilisation"] == 0
        assert after["gigastt_ws_lag_max_seconds"] == 0
        sent = sum(audio.shape[0] for audio, _ in streams) / 16000
        assert abs(after["gigastt_live_audio_seconds_total"] - sent) < 1e-3 * sessions
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.log
