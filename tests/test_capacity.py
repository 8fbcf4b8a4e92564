"""Live capacity (D27) and the live-load metrics: `--pool-size auto` against a real server, the
capacity arithmetic, and the lag and re-encode metrics after a real WebSocket stream.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gigastt.engine.capacity import LIVE_UTILISATION, live_capacity, simulated_passes
from gigastt.engine.model import GigaamModel
from gigastt.engine.streaming import MAX_UTTERANCE, PARTIAL_STRIDE, PARTIAL_WINDOW
from gigastt.testing.audio import silence, tone_sequence
from tests.serverproc import ROOT, ServerProcess, scrape_metrics
from tests.wsclient import collect, open_session, pcm16

HELLO = ["▁При", "вет", ",", "▁мир", "."]
HOW = ["▁как", "▁де", "ла", "?"]


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gigastt", "serve", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


# --- --pool-size auto --------------------------------------------------------------------------


def test_pool_size_auto_measures_the_capacity_and_uses_it_as_the_pool(small_model: Path) -> None:
    server = ServerProcess(small_model, "--pool-size", "auto", "--metrics")
    try:
        models = server.request("GET", "/v1/models").json()
        ready = server.request("GET", "/ready")
        assert isinstance(models, dict) and ready.status == 200
        capacity = models["capacity"]
        assert isinstance(capacity, int) and not isinstance(capacity, bool) and capacity >= 1
        assert list(models)[-1] == "capacity"  # a trailing key: older clients read on unchanged
        assert models["pool_size"] == capacity
        assert ready.json() == {"status": "ready", "pool_available": capacity,
                                "pool_total": capacity}
        assert f"live capacity: {capacity} real-time sessions" in server.log
        # The calibration happened before the server listened, on the inference lane.
        assert server.log.index("live capacity") < server.log.index("listening on")
        metrics = server.request("GET", "/metrics").body.decode()
        assert f"gigastt_pool_available {capacity}\n" in metrics
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.log


def test_a_fixed_pool_size_reports_no_capacity(small_model: Path) -> None:
    server = ServerProcess(small_model, "--pool-size", "3")
    try:
        models = server.request("GET", "/v1/models").json()
        assert isinstance(models, dict) and "capacity" not in models
        assert models["pool_size"] == 3
        assert "live capacity" not in server.log
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("value", ["0", "abc", "Auto", "auto5", "-1", ""])
def test_bad_pool_sizes_are_usage_errors(value: str) -> None:
    result = _serve("--pool-size", value)
    assert result.returncode == 2
    assert "argument --pool-size:" in result.stderr
    assert "or `auto`" in result.stderr or "1..10000" in result.stderr


# --- the arithmetic ----------------------------------------------------------------------------


def test_live_capacity_is_the_share_of_the_cores_over_one_sessions_cost() -> None:
    # A session costing 0.1 s of the lane per live second: 0.8 / 0.1 = 8 sessions.
    assert live_capacity(0.1) == round(LIVE_UTILISATION / 0.1) == 8
    assert live_capacity(0.3) == 2  # floor(2.67): never more than the cores carry
    assert live_capacity(5.0) == 1  # slower than real time still admits one session
    assert live_capacity(0.0) == 1


def test_the_simulated_dictation_exercises_the_streaming_design(small_model: Path) -> None:
    """The re-encode factor comes from the session state machine itself: passes at the default
    cadence, and a final at least every utterance cap (tokens never pause)."""
    lengths = simulated_passes(GigaamModel(small_model).vocab, seconds=45.0)
    assert len(lengths) >= 45.0 / 1.0
    assert max(lengths) <= (MAX_UTTERANCE + 1.0) * 16000
    factor = sum(lengths) / (45.0 * 16000)
    assert 1.0 <= factor < 45.0
    # Bounded by the windowed design (partials re-encode WINDOW / STRIDE, finals about once
    # more, catch-up at the cap a little); re-encoding whole utterances gave about 21.
    assert factor <= PARTIAL_WINDOW / PARTIAL_STRIDE + 2.0


# --- lag and re-encode metrics -----------------------------------------------------------------


def test_lag_and_reencode_metrics_after_a_real_stream(tone_model: Path) -> None:
    server = ServerProcess(tone_model, "--metrics", "--pool-size", "1")
    try:
        audio = np.concatenate([tone_sequence(HELLO), silence(1.5), tone_sequence(HOW),
                                silence(0.5)])
        sent = audio.shape[0] / 16000

        async def session() -> tuple[list[dict[str, object]], dict[str, float]]:
            ws, _ = await open_session(server)
            await ws.send(json.dumps({"type": "configure", "sample_rate": 16000}))
            data = pcm16(audio)
            step = 1600 * 2
            for start in range(0, len(data), step):
                await ws.send(data[start : start + step])
            during = await asyncio.to_thread(scrape_metrics, server)
            await ws.send(json.dumps({"type": "stop"}))
            messages = await collect(ws)
            await ws.wait_closed()
            return messages, during

        messages, during = asyncio.run(session())
        assert [m for m in messages if m["type"] == "final"]
        # While the session is open: its slot is the whole pool, and its lag is visible.
        assert during["gigastt_pool_utilisation"] == 1
        assert during["gigastt_ws_lag_max_seconds"] >= 0
        deadline = time.monotonic() + 5
        while True:
            after = scrape_metrics(server)
            if after["gigastt_pool_utilisation"] == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert after["gigastt_pool_utilisation"] == 0
        assert after["gigastt_ws_lag_max_seconds"] == 0  # no live session: no lag
        assert after["gigastt_live_audio_seconds_total"] == pytest.approx(sent)
        encoded = after["gigastt_live_encoded_seconds_total"]
        # Every sample is recognised at least once (the final pass covers what is left).
        assert encoded >= sent * 0.5
        assert encoded >= sent - 0.05  # overlapping windows cover every sample
        passes = after["gigastt_ws_lag_seconds_count"]
        assert passes >= 2
        assert after['gigastt_ws_lag_seconds_bucket{le="+Inf"}'] == passes
        assert 0 <= after["gigastt_ws_lag_seconds_sum"] <= passes * sent
        # No per-session series (D43): one sample per family, whatever the sessions.
        assert not [k for k in after if k.startswith(("gigastt_ws_lag", "gigastt_live_"))
                    and "{" in k and "le=" not in k]
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.log
