"""Live sessions with the Silero VAD (D28): silence costs no recognition pass, utterances end
at the VAD's silences (`endpoint_reason: "vad"`), finals stay exact; the real server and VAD.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gigastt.engine.executor import ExecutorClosed
from gigastt.engine.model import GigaamModel
from gigastt.engine.recognizer import Recognizer
from gigastt.engine.streaming import Segment, StreamingRecognizer
from gigastt.engine.vad import SileroVad, VadStream
from gigastt.engine.vadlane import VadLane
from gigastt.testing.audio import wav_bytes
from tests.conftest import SHARED, golos_clips, read_pcm16
from tests.serverproc import ServerProcess, scrape_metrics, serving
from tests.wsclient import collect, open_session, pcm16

VAD_PATH = SHARED / "fixtures" / "vad" / "silero_vad.onnx"
pytestmark = pytest.mark.skipif(not VAD_PATH.is_file() or not golos_clips(),
                                reason="shared/fixtures/vad or shared/fixtures/golos not present")
RATE = 16_000


def quiet(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * RATE), np.float32)


def clip(index: int) -> np.ndarray:
    return read_pcm16(golos_clips()[index])


def one_clip_in_silence() -> tuple[np.ndarray, tuple[int, int]]:
    """60 s: 30 s of silence, a Golos clip, silence; and where the clip lies."""
    speech = clip(0)
    start = 30 * RATE
    audio = np.concatenate([quiet(30), speech, quiet(60 - 30 - speech.shape[0] / RATE)])
    return audio, (start, start + speech.shape[0])


def two_clips(gap: float) -> np.ndarray:
    """Two clips without a pause of their own, ``gap`` s apart (the VAD hears 1.1 s between
    their speech: clip 13's recording starts with 0.3 s of quiet)."""
    return np.concatenate([quiet(1.0), clip(1), quiet(gap), clip(13), quiet(2.5)])


@pytest.fixture(scope="module")
def small(small_model: Path) -> Recognizer:
    return Recognizer(GigaamModel(small_model))


@pytest.fixture(scope="module")
def vad() -> SileroVad:
    return SileroVad(VAD_PATH)


def stream_with_vad(recognizer: Recognizer, vad: SileroVad, audio: np.ndarray, chunk: int,
                    **settings: Any) -> tuple[list[Segment], int]:
    """Feed ``audio`` like a session with a VAD; returns the messages and the partial passes."""
    s = StreamingRecognizer(recognizer.model.vocab, vad=True, **settings)
    vad_stream = VadStream(RATE)
    out: list[Segment] = []
    partial_passes = 0
    for start in range(0, len(audio), chunk):
        s.feed(audio[start : start + chunk])
        s.on_vad(vad_stream.feed(vad, s.vad_audio()))
        while (job := s.next_pass()) is not None:
            partial_passes += not job.final
            out += s.on_result(job, recognizer.tokens(job.samples))
    s.finish()
    while (job := s.next_pass()) is not None:
        out += s.on_result(job, recognizer.tokens(job.samples))
    return out, partial_passes


def finals(segments: list[Segment]) -> list[Segment]:
    return [s for s in segments if s.kind == "final"]


@pytest.mark.parametrize("chunk", [320, 1600, 16000])
def test_silence_costs_no_pass_and_the_vad_ends_the_utterance(small: Recognizer, vad: SileroVad,
                                                               chunk: int) -> None:
    audio, (begin, end) = one_clip_in_silence()
    segments, partial_passes = stream_with_vad(small, vad, audio, chunk)
    spoken = [f for f in finals(segments) if f.words]
    assert len(spoken) == 1 and spoken[0].reason == "vad"
    assert finals(segments)[-1].reason == "stop" and not finals(segments)[-1].words
    # The final covers the clip (with a little silence on each side) and is exact (D26).
    assert spoken[0].span is not None
    lo, hi = spoken[0].span
    # (the clip's recording ends in a little silence of its own: the VAD may end before it)
    assert begin - 3 * RATE // 2 <= lo <= begin and end - RATE // 2 <= hi <= end + RATE
    expected = small.transcribe(audio[lo:hi])
    assert [w.word for w in spoken[0].words] == [w.word for w in expected.words]
    assert [w.start for w in spoken[0].words] == \
        pytest.approx([w.start + lo / RATE for w in expected.words], abs=1e-9)
    # Partial passes only around the clip: a 0.8 s stride over its seconds, not over 60 s.
    assert partial_passes <= (hi - lo) / RATE / 0.8 + 3


@pytest.mark.parametrize(("silence_ms", "expected"), [(300, 2), (1500, 1)])
def test_min_silence_decides_the_vad_endpoint(small: Recognizer, vad: SileroVad, silence_ms: int,
                                              expected: int) -> None:
    segments, _ = stream_with_vad(small, vad, two_clips(0.8), 1600, min_silence_ms=silence_ms)
    spoken = [f for f in finals(segments) if f.words]
    assert [f.reason for f in spoken] == ["vad"] * expected


def test_manual_endpointing_with_a_vad_still_skips_silence(small: Recognizer,
                                                           vad: SileroVad) -> None:
    audio, _ = one_clip_in_silence()
    segments, partial_passes = stream_with_vad(small, vad, audio, 1600, endpoint_mode="manual")
    # Only the 20 s cap ends the utterance (after the clip, in the silence), then `stop`.
    assert [(f.reason, bool(f.words)) for f in finals(segments)] == [("cap", True),
                                                                     ("stop", False)]
    assert partial_passes <= 12


# --- the real server ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(small_model: Path) -> Iterator[ServerProcess]:
    yield from serving(small_model, "--metrics", "--vad", "on", "--vad-model", str(VAD_PATH))


async def session(server: ServerProcess, audio: np.ndarray, **configure: Any,
                  ) -> list[dict[str, Any]]:
    ws, _ = await open_session(server)
    await ws.send(json.dumps({"type": "configure", "sample_rate": RATE, "protocol_version": "1.2",
                              **configure}))
    data = pcm16(audio)
    for start in range(0, len(data), 3200):
        await ws.send(data[start : start + 3200])
    await ws.send(json.dumps({"type": "stop"}))
    messages = await collect(ws, timeout=60)
    await ws.wait_closed()
    return messages


def test_a_silent_minute_costs_the_vad_only(server: ServerProcess, small: Recognizer,
                                                  vad: SileroVad) -> None:
    audio, _ = one_clip_in_silence()
    before = scrape_metrics(server)
    messages = asyncio.run(session(server, audio))
    after = scrape_metrics(server)
    spoken = [m for m in messages if m["type"] == "final" and m["words"]]
    assert [m["endpoint_reason"] for m in spoken] == ["vad"]
    # The same text as the engine gives for the same audio in the same 100 ms frames.
    expected = [f for f in finals(stream_with_vad(small, vad, audio, 1600)[0]) if f.words]
    assert spoken[0]["text"] == " ".join(w.word for w in expected[0].words)
    passes = (after["gigastt_ws_lag_seconds_count"]
              - before.get("gigastt_ws_lag_seconds_count", 0.0))
    encoded = (after["gigastt_live_encoded_seconds_total"]
               - before["gigastt_live_encoded_seconds_total"])
    assert passes <= 12 and encoded <= 30  # of 60 s sent: the clip's seconds, a few times over
    judged = (after['gigastt_vad_audio_seconds_total{route="ws"}']
              - before.get('gigastt_vad_audio_seconds_total{route="ws"}', 0.0))
    speech = (after['gigastt_vad_speech_seconds_total{route="ws"}']
              - before.get('gigastt_vad_speech_seconds_total{route="ws"}', 0.0))
    # (sent faster than real time: `stop` may come before the VAD has judged the last seconds,
    # which then go to the final pass unjudged)
    assert 45 <= judged <= 60 + 1e-6 and 1 <= speech <= 6


@pytest.mark.parametrize(("silence_ms", "expected"), [(300, 2), (1500, 1)])
def test_min_silence_over_the_wire(server: ServerProcess, silence_ms: int, expected: int) -> None:
    messages = asyncio.run(session(server, two_clips(0.8), min_silence_ms=silence_ms))
    spoken = [m for m in messages if m["type"] == "final" and m["words"]]
    assert [m["endpoint_reason"] for m in spoken] == ["vad"] * expected


def test_configure_can_turn_the_vad_off(server: ServerProcess) -> None:
    audio, _ = one_clip_in_silence()
    before = scrape_metrics(server)
    messages = asyncio.run(session(server, audio[25 * RATE : 40 * RATE], vad=False))
    after = scrape_metrics(server)
    assert not [m for m in messages if m["type"] == "error"]
    assert {m["endpoint_reason"] for m in messages if m["type"] == "final" and m["words"]} <= \
        {"blank", "stop"}
    assert after['gigastt_vad_audio_seconds_total{route="ws"}'] == \
        before.get('gigastt_vad_audio_seconds_total{route="ws"}', 0.0)
    # Without the VAD the silence is recognised too.
    assert after["gigastt_live_encoded_seconds_total"] - \
        before["gigastt_live_encoded_seconds_total"] >= 15


def test_configure_vad_true_is_accepted_when_loaded(server: ServerProcess) -> None:
    audio = two_clips(0.8)
    messages = asyncio.run(session(server, audio, vad=True))
    assert not [m for m in messages if m["type"] == "error"]
    # (the default min_silence_ms, 600, is shorter than the 1.1 s the VAD hears between them)
    assert [m["endpoint_reason"] for m in messages if m["type"] == "final" and m["words"]] == \
        ["vad", "vad"]


# --- SSE (`POST /v1/transcribe/stream`) ----------------------------------------------------------


def sse_finals(body: bytes) -> list[dict[str, Any]]:
    events = [json.loads(line[6:]) for line in body.decode().splitlines()
              if line.startswith("data: ")]
    return [e for e in events if e.get("type") == "final"]


@pytest.mark.parametrize("query", ["", "?vad=false"])
def test_sse_with_and_without_the_vad(server: ServerProcess, small: Recognizer, vad: SileroVad,
                                      query: str) -> None:
    audio, _ = one_clip_in_silence()
    before = scrape_metrics(server)
    reply = server.request("POST", "/v1/transcribe/stream" + query, wav_bytes(audio))
    after = scrape_metrics(server)
    assert reply.status == 200
    finals_seen = sse_finals(reply.body)
    judged = (after.get('gigastt_vad_audio_seconds_total{route="stream"}', 0.0)
              - before.get('gigastt_vad_audio_seconds_total{route="stream"}', 0.0))
    if query:
        assert judged == 0
        return
    # The same utterances as a live session fed the file in its 1 s chunks, each final exact.
    expected = [f for f in finals(stream_with_vad(small, vad, audio, 16000)[0]) if f.words]
    assert [f["text"] for f in finals_seen] == [" ".join(w.word for w in f.words)
                                                for f in expected]
    assert len(finals_seen) == 1 and judged == pytest.approx(60.0, abs=0.05)


def test_sse_refuses_a_bad_vad_query(server: ServerProcess) -> None:
    reply = server.request("POST", "/v1/transcribe/stream?vad=maybe", wav_bytes(quiet(1.0)))
    assert reply.status == 400 and json.loads(reply.body)["code"] == "invalid_vad"


# --- the VAD lane -------------------------------------------------------------------------------


class FailsOnce:
    """The real VAD, except that its first call raises (as a broken runtime would)."""

    def __init__(self, vad: SileroVad) -> None:
        self.vad, self.failed = vad, False

    def run(self, *args: Any) -> Any:
        if not self.failed:
            self.failed = True
            raise RuntimeError("first call fails")
        return self.vad.run(*args)


def test_the_vad_lane_batches_sessions_in_order_and_survives_a_failure(vad: SileroVad) -> None:
    lane = VadLane(FailsOnce(vad))  # type: ignore[arg-type]
    try:
        with pytest.raises(RuntimeError, match="first call fails"):
            lane.submit(VadStream(RATE), clip(0)).result(timeout=30)
        audio = [clip(i) for i in range(3)]
        streams = [VadStream(RATE) for _ in audio]
        # Two requests per session, all queued at once: one run per session, in order.
        futures = [(k, lane.submit(streams[k], a[part])) for part in (slice(0, 7777),
                                                                     slice(7777, None))
                   for k, a in enumerate(audio)]
        got: dict[int, list[np.ndarray]] = {k: [] for k in range(len(audio))}
        for k, future in futures:
            got[k].append(future.result(timeout=30))
        for k, a in enumerate(audio):
            assert np.array_equal(np.concatenate(got[k]), VadStream(RATE).feed(vad, a))
    finally:
        lane.close(timeout=5)
    with pytest.raises(ExecutorClosed):
        lane.submit(VadStream(RATE), clip(0))
