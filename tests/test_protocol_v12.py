"""WebSocket protocol 1.2 (docs/api.md "GET /v1/ws", D25): the builders, the configure parser, and
sessions against a real server on the tone model.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from gigastt import protocol
from gigastt.engine.audio import resample
from gigastt.engine.transcript import Word
from gigastt.errors import ErrorCode, ws_error_message
from gigastt.protocol import Configure, parse_control
from gigastt.testing.audio import silence, tone_sequence, wav_bytes
from tests.serverproc import ServerProcess, serving
from tests.wsclient import collect, open_session, pcm16

HELLO = ["▁При", "вет", ",", "▁мир", "."]
HOW = ["▁как", "▁де", "ла", "?"]
WORDS = [Word("привет", 0.48, 0.8, 0.97), Word("как", 0.88, 1.12, 0.98),
         Word("дела", 1.2, 1.2, 0.5)]

# --------------------------------------------------------------------------- builders


def test_partial_exact_bytes() -> None:
    out = protocol.segment_v12("partial", WORDS[:2], 1712700000.123, committed=1)
    assert out == (
        '{"type":"partial","text":"привет как","committed":"привет","tentative":" как",'
        '"words":[{"word":"привет","start":0.48,"end":0.8,"confidence":0.97},'
        '{"word":"как","start":0.88,"end":1.12,"confidence":0.98}],'
        '"is_final":false,"timestamp":1712700000.123,"confidence":0.974375}'
    )


def test_final_exact_bytes() -> None:
    out = protocol.segment_v12("final", WORDS[:1], 2.0, committed=0, reason="blank")
    assert out == (
        '{"type":"final","text":"привет","committed":"привет","tentative":"",'
        '"words":[{"word":"привет","start":0.48,"end":0.8,"confidence":0.97}],'
        '"is_final":true,"speech_final":true,"endpoint_reason":"blank","timestamp":2.0,'
        '"confidence":0.97}'
    )


def test_empty_final_on_stop_truncated() -> None:
    assert protocol.segment_v12("final", [], 2.5, committed=0, reason="stop", truncated=True) == (
        '{"type":"final","text":"","committed":"","tentative":"","words":[],"is_final":true,'
        '"speech_final":true,"endpoint_reason":"stop","truncated":true,"timestamp":2.5}'
    )


def test_partial_omits_final_only_keys_and_confidence_without_words() -> None:
    msg = json.loads(protocol.segment_v12("partial", [], 1.0, committed=0, truncated=True))
    assert list(msg) == ["type", "text", "committed", "tentative", "words", "is_final",
                         "timestamp"]


@pytest.mark.parametrize("committed", [-1, 0, 1, 2, 3, 99])
def test_text_is_committed_plus_tentative(committed: int) -> None:
    for kind in ("partial", "final"):
        msg = json.loads(protocol.segment_v12(kind, WORDS, 1.0, committed=committed,
                                              reason="cap"))
        assert msg["text"] == msg["committed"] + msg["tentative"] == "привет как дела"
        if kind == "final":  # a final commits everything, whatever the count says
            assert (msg["committed"], msg["tentative"]) == (msg["text"], "")
            assert msg["endpoint_reason"] == "cap" and "truncated" not in msg
        else:
            assert msg["committed"] == " ".join(w.word for w in WORDS[: max(0, committed)])
            assert "speech_final" not in msg and "endpoint_reason" not in msg


def test_key_order_of_a_full_final() -> None:
    msg = json.loads(protocol.segment_v12("final", WORDS, 1.0, committed=3, reason="stop",
                                          truncated=True))
    assert list(msg) == ["type", "text", "committed", "tentative", "words", "is_final",
                         "speech_final", "endpoint_reason", "truncated", "timestamp",
                         "confidence"]


def test_confidence_is_duration_weighted() -> None:
    # Durations: 0.32 + one frame, 0.24 + one frame, and one frame for the one-token word.
    weights = [0.36, 0.28, 0.04]
    expected = (0.97 * 0.36 + 0.98 * 0.28 + 0.5 * 0.04) / sum(weights)
    msg = json.loads(protocol.segment_v12("partial", WORDS, 1.0, committed=0))
    assert msg["confidence"] == pytest.approx(expected, abs=1e-6)
    single = json.loads(protocol.segment_v12("partial", WORDS[2:], 1.0, committed=0))
    assert single["confidence"] == 0.5


def test_final_needs_a_reason() -> None:
    with pytest.raises(ValueError):
        protocol.segment_v12("final", WORDS, 1.0, committed=0)


def test_v10_segment_unchanged() -> None:
    assert protocol.segment("final", WORDS[:1], 2.0) == (
        '{"type":"final","text":"привет","words":[{"word":"привет","start":0.48,"end":0.8,'
        '"confidence":0.97}],"is_final":true,"timestamp":2.0}'
    )


# --------------------------------------------------------------------------- configure parser


def _configure(**fields: object) -> str:
    return json.dumps({"type": "configure", **fields}, ensure_ascii=False)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"endpoint_mode": "manual"}, Configure(endpoint_mode="manual")),
        ({"min_silence_ms": 300}, Configure(min_silence_ms=300)),
        ({"commit_policy": "on_finalize"}, Configure(commit_policy="on_finalize")),
        ({"vad": False}, Configure(vad=False)),
        ({"hotwords": ["Сбер", "GigaAM"]}, Configure(hotwords=("Сбер", "GigaAM"))),
        ({"hotwords": []}, Configure(hotwords=())),
        ({"protocol_version": "1.2", "punctuation": "x", "itn": [1]},
         Configure(protocol_version="1.2")),
        ({"endpoint_mode": None, "min_silence_ms": None, "vad": None}, Configure()),
    ],
)
def test_parse_new_fields(fields: dict[str, object], expected: Configure) -> None:
    parsed = parse_control(_configure(**fields))
    assert parsed == expected
    assert parsed.invalid_field() is None


@pytest.mark.parametrize(
    "fields",
    [
        {"endpoint_mode": 1},
        {"endpoint_mode": ["manual"]},
        {"commit_policy": False},
        {"min_silence_ms": "300"},
        {"min_silence_ms": 300.0},
        {"min_silence_ms": True},
        {"vad": "true"},
        {"vad": 0},
        {"hotwords": "Сбер"},
        {"hotwords": {"a": "b"}},
        {"protocol_version": "1.2", "min_silence_ms": 300.5},
    ],
)
def test_wrong_types_make_the_message_ignored(fields: dict[str, object]) -> None:
    assert parse_control(_configure(**fields)) is None


def test_repeated_new_field_makes_the_message_ignored() -> None:
    assert parse_control('{"type":"configure","vad":false,"vad":false}') is None
    assert parse_control('{"type":"configure","hotwords":[],"hotwords":[]}') is None


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"sample_rate": 7000}, "invalid_sample_rate"),
        ({"endpoint_mode": "Manual"}, "invalid_endpoint_mode"),
        ({"endpoint_mode": ""}, "invalid_endpoint_mode"),
        ({"min_silence_ms": 99}, "invalid_min_silence_ms"),
        ({"min_silence_ms": 10001}, "invalid_min_silence_ms"),
        ({"min_silence_ms": -1}, "invalid_min_silence_ms"),
        ({"min_silence_ms": 0}, "invalid_min_silence_ms"),
        ({"commit_policy": "always"}, "invalid_commit_policy"),
        ({"vad": True}, "vad_not_loaded"),
        ({"hotwords": [1]}, "invalid_hotwords"),
        ({"hotwords": ["ok", None]}, "invalid_hotwords"),
        ({"hotwords": [""]}, "invalid_hotwords"),
        ({"hotwords": ["  "]}, "invalid_hotwords"),
        ({"hotwords": ["a\nb"]}, "invalid_hotwords"),
        ({"hotwords": ["a\tb"]}, "invalid_hotwords"),
        ({"hotwords": ["x" * 65]}, "invalid_hotwords"),
        ({"hotwords": ["x"] * 65}, "invalid_hotwords"),
        ({"hotwords": [["nested"]]}, "invalid_hotwords"),
        # The first bad field in the documented order answers; the message is one error.
        ({"hotwords": [1], "endpoint_mode": "x", "min_silence_ms": 5}, "invalid_endpoint_mode"),
        ({"vad": True, "commit_policy": "x"}, "invalid_commit_policy"),
    ],
)
def test_bad_values_name_their_code(fields: dict[str, object], code: str) -> None:
    parsed = parse_control(_configure(**fields))
    assert isinstance(parsed, Configure)
    assert parsed.invalid_field() == code
    assert ErrorCode(code)  # every code is in the catalogue


def test_limits_are_inclusive() -> None:
    for fields in ({"min_silence_ms": 100}, {"min_silence_ms": 10000},
                   {"hotwords": ["x" * 64] * 64}, {"endpoint_mode": "assistant"},
                   {"commit_policy": "auto"}, {"commit_policy": "stable_prefix"}):
        parsed = parse_control(_configure(**fields))
        assert isinstance(parsed, Configure) and parsed.invalid_field() is None, fields


def test_values_match_the_recognizers() -> None:
    from gigastt.engine import streaming

    assert protocol.ENDPOINT_MODES == streaming.ENDPOINT_MODES
    assert protocol.COMMIT_POLICIES == streaming.COMMIT_POLICIES


def test_vad_true_is_fine_once_a_vad_is_loaded() -> None:
    parsed = parse_control(_configure(vad=True))
    assert isinstance(parsed, Configure) and parsed.invalid_field(vad_loaded=True) is None


def test_error_messages_are_fixed_and_name_the_values() -> None:
    assert ws_error_message(ErrorCode.INVALID_ENDPOINT_MODE) == (
        '{"type":"error","message":"Unsupported endpoint_mode. Supported: auto, assistant, '
        'manual","code":"invalid_endpoint_mode"}')
    assert ws_error_message(ErrorCode.INVALID_MIN_SILENCE_MS) == (
        '{"type":"error","message":"min_silence_ms must be a whole number from 100 to 10000",'
        '"code":"invalid_min_silence_ms"}')
    assert ws_error_message(ErrorCode.INVALID_COMMIT_POLICY) == (
        '{"type":"error","message":"Unsupported commit_policy. Supported: auto, stable_prefix, '
        'on_finalize","code":"invalid_commit_policy"}')
    assert ws_error_message(ErrorCode.VAD_NOT_LOADED) == (
        '{"type":"error","message":"No VAD model is loaded on this server",'
        '"code":"vad_not_loaded"}')
    assert ws_error_message(ErrorCode.INVALID_HOTWORDS) == (
        '{"type":"error","message":"hotwords must be a list of at most 64 phrases of 1 to 64 '
        'characters without control characters","code":"invalid_hotwords"}')


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def server(tone_model: Path) -> Iterator[ServerProcess]:
    yield from serving(tone_model)


TWO_PHRASES = np.concatenate([tone_sequence(HELLO), silence(1.5), tone_sequence(HOW),
                              silence(1.5)])
V10_KEYS = ["type", "text", "words", "is_final", "timestamp"]
V12_ORDER = ["type", "text", "committed", "tentative", "words", "is_final", "speech_final",
             "endpoint_reason", "truncated", "timestamp", "confidence"]


async def _session(server: ServerProcess, configures: list[dict[str, Any]],
                   audio: np.ndarray | None = None, *, rate: int = 16000,
                   frame_samples: int = 1600) -> tuple[list[str], int | None]:
    """Configure, send 16-bit audio (at ``rate``) and stop; every text frame, and the Close."""
    ws, _ = await open_session(server)
    if rate != 48000:
        configures = [{"type": "configure", "sample_rate": rate}, *configures]
    for message in configures:
        await ws.send(json.dumps(message, ensure_ascii=False))
    if audio is not None:
        data = pcm16(audio)
        for start in range(0, len(data), frame_samples * 2):
            await ws.send(data[start : start + frame_samples * 2])
    await ws.send(json.dumps({"type": "stop"}))
    texts: list[str] = []
    try:
        while True:
            texts.append(str(await asyncio.wait_for(ws.recv(), 60)))
    except ConnectionClosed:
        pass
    await ws.wait_closed()
    return texts, ws.close_code


def _run(server: ServerProcess, configures: list[dict[str, Any]],
         audio: np.ndarray | None = None, **kwargs: Any) -> tuple[list[dict[str, Any]], int | None]:
    texts, code = asyncio.run(_session(server, configures, audio, **kwargs))
    return [json.loads(t) for t in texts], code


def _words(message: dict[str, Any]) -> list[Word]:
    return [Word(w["word"], w["start"], w["end"], w["confidence"]) for w in message["words"]]


def check_v12(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every §2 rule of protocol 1.2 on every segment of a session; returns the finals."""
    finals = []
    committed = ""  # within the current utterance
    for m in messages:
        if m["type"] not in ("partial", "final"):
            continue
        keys = list(m)
        assert keys == [k for k in V12_ORDER if k in m], keys
        assert m["text"] == m["committed"] + m["tentative"]
        assert m["text"] == " ".join(w["word"] for w in m["words"])
        assert ("confidence" in m) == bool(m["words"])
        if m["words"]:
            assert 0.0 <= m["confidence"] <= 1.0
        # committed only grows within an utterance, and the final never contradicts it
        assert m["committed"].startswith(committed), (committed, m)
        if m["type"] == "partial":
            assert m["is_final"] is False
            assert not {"speech_final", "endpoint_reason", "truncated"} & set(m)
            committed = m["committed"]
        else:
            assert m["is_final"] is True and m["speech_final"] is True
            assert m["endpoint_reason"] in ("blank", "vad", "stop", "cap")
            assert m["committed"] == m["text"] and m["tentative"] == ""
            assert m.get("truncated", True) is True
            committed = ""
            finals.append(m)
    return finals


def test_ready_carries_the_current_limits(tone_model: Path) -> None:
    async def main(proc: ServerProcess) -> str:
        ws = await connect(f"ws://{proc.host}:{proc.port}/v1/ws", compression=None)
        ready = str(await asyncio.wait_for(ws.recv(), 10))
        await ws.close()
        return ready

    proc = ServerProcess(tone_model, "--max-session-secs", "120", "--idle-timeout-secs", "45")
    try:
        ready = asyncio.run(main(proc))
    finally:
        assert proc.stop() == 0
    assert ready == (
        '{"type":"ready","model":"gigaam-v3-e2e-rnnt","sample_rate":48000,"version":"1.0",'
        '"supported_rates":[8000,16000,24000,44100,48000],"min_protocol_version":"1.0",'
        '"max_session_secs":120,"idle_timeout_secs":45}')


@pytest.mark.parametrize("version", [None, "1.0", "1.1"])
def test_v10_segments_are_byte_identical(server: ServerProcess, version: str | None) -> None:
    configures = [{"type": "configure", "protocol_version": version}] if version else []
    texts, code = asyncio.run(_session(server, configures, TWO_PHRASES))
    assert code == 1000
    segments = [t for t in texts if json.loads(t)["type"] in ("partial", "final")]
    assert len(segments) == len(texts) and segments
    for text in segments:
        m = json.loads(text)
        assert list(m) == V10_KEYS
        # Rebuilt by the 1.0 builder from its own values: the same bytes.
        assert text == protocol.segment(m["type"], _words(m), m["timestamp"])
    finals = [json.loads(t) for t in segments if json.loads(t)["type"] == "final"]
    assert [f["text"] for f in finals] == ["Привет, мир.", "как дела?", ""]


@pytest.mark.parametrize("frame_samples", [320, 1600, 16000])
def test_v12_session_every_message_follows_the_rules(server: ServerProcess,
                                                     frame_samples: int) -> None:
    messages, code = _run(server, [{"type": "configure", "protocol_version": "1.2"}],
                          TWO_PHRASES, frame_samples=frame_samples)
    assert code == 1000 and "error" not in [m["type"] for m in messages]
    finals = check_v12(messages)
    assert [(f["text"], f["endpoint_reason"]) for f in finals] == [
        ("Привет, мир.", "blank"), ("как дела?", "blank"), ("", "stop")]
    assert "confidence" in finals[0] and "confidence" not in finals[-1]
    assert not any("truncated" in f for f in finals)


def test_v12_long_utterance_commits_grow_and_final_agrees(server: ServerProcess) -> None:
    # 20 s of speech without a pause: many partial windows, each checked against the rules.
    audio = tone_sequence((HELLO + HOW) * 5, tone_s=0.2, gap_s=0.3)
    messages, code = _run(server, [{"type": "configure", "protocol_version": "1.2"}], audio,
                          frame_samples=1600)
    assert code == 1000
    finals = check_v12(messages)
    assert any(m["committed"] for m in messages if m["type"] == "partial")
    assert finals[-1]["endpoint_reason"] == "stop"
    file = server.request("POST", "/v1/transcribe", wav_bytes(audio, 16000)).json()
    assert isinstance(file, dict)
    # The same pieces in the same order; only where words split may differ, because the live
    # cap (20 s) and the file's windows (18 s with their context) cut in different places.
    assert "".join(f["text"] for f in finals).replace(" ", "") == file["text"].replace(" ", "")


def test_v12_stop_final_has_pending_words_and_reason_stop(server: ServerProcess) -> None:
    messages, code = _run(server, [{"type": "configure", "protocol_version": "1.2"}],
                          tone_sequence(HELLO, tail_s=0.1))
    finals = check_v12(messages)
    assert code == 1000 and len(finals) == 1
    assert (finals[0]["text"], finals[0]["endpoint_reason"]) == ("Привет, мир.", "stop")


def test_v12_on_finalize_commits_nothing_before_the_final(server: ServerProcess) -> None:
    audio = tone_sequence((HELLO + HOW) * 3, tone_s=0.2, gap_s=0.3)
    messages, _ = _run(server, [{"type": "configure", "protocol_version": "1.2",
                                 "commit_policy": "on_finalize"}], audio)
    check_v12(messages)
    partials = [m for m in messages if m["type"] == "partial"]
    assert partials and all(m["committed"] == "" for m in partials)


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        ({"endpoint_mode": "bogus"}, "invalid_endpoint_mode"),
        ({"min_silence_ms": 50}, "invalid_min_silence_ms"),
        ({"commit_policy": "never"}, "invalid_commit_policy"),
        ({"vad": True}, "vad_not_loaded"),
        ({"hotwords": ["x" * 65]}, "invalid_hotwords"),
        ({"hotwords": [7]}, "invalid_hotwords"),
        ({"sample_rate": 7000}, "invalid_sample_rate"),
    ],
)
def test_atomic_rejection(server: ServerProcess, bad: dict[str, Any], code: str) -> None:
    # The rejected message also asks for 1.2, 16 kHz and manual endpointing: none of it may
    # apply. 48 kHz audio with two phrases then proves the rate, mode and version unchanged.
    rejected = {"type": "configure", "protocol_version": "1.2", "sample_rate": 16000,
                "endpoint_mode": "manual", **bad}
    audio = resample(TWO_PHRASES, 16000, 48000)
    messages, close = _run(server, [rejected], audio, rate=48000, frame_samples=4800)
    assert close == 1000
    errors = [m for m in messages if m["type"] == "error"]
    assert len(errors) == 1 and errors[0]["code"] == code and messages[0] == errors[0]
    finals = [m for m in messages if m["type"] == "final"]
    assert [f["text"] for f in finals] == ["Привет, мир.", "как дела?", ""]
    assert all(list(m) == V10_KEYS for m in messages if m["type"] != "error")


def test_session_continues_after_a_rejection(server: ServerProcess) -> None:
    messages, code = _run(server, [
        {"type": "configure", "protocol_version": "1.2", "vad": True},
        {"type": "configure", "protocol_version": "1.2", "vad": False, "hotwords": ["Сбер"],
         "punctuation": True, "itn": False},
    ], tone_sequence(HELLO))
    assert messages[0]["type"] == "error" and messages[0]["code"] == "vad_not_loaded"
    assert [m["type"] for m in messages].count("error") == 1
    finals = check_v12(messages)
    assert finals[-1]["text"] == "Привет, мир." and code == 1000


def test_configures_compose(server: ServerProcess) -> None:
    # Version, then manual endpointing in a second message: one utterance until stop.
    messages, code = _run(server, [
        {"type": "configure", "protocol_version": "1.2"},
        {"type": "configure", "endpoint_mode": "manual"},
        {"type": "configure", "min_silence_ms": 300},
    ], TWO_PHRASES)
    finals = check_v12(messages)
    assert code == 1000 and "error" not in [m["type"] for m in messages]
    assert [(f["text"], f["endpoint_reason"]) for f in finals] == [
        ("Привет, мир. как дела?", "stop")]


def test_a_later_configure_can_return_to_1_0(server: ServerProcess) -> None:
    messages, _ = _run(server, [{"type": "configure", "protocol_version": "1.2"},
                                {"type": "configure", "protocol_version": "1.1"}],
                       tone_sequence(HELLO))
    assert all(list(m) == V10_KEYS for m in messages)


@pytest.mark.parametrize("fields", [{"min_silence_ms": "300"}, {"vad": "yes"},
                                    {"hotwords": "Сбер"}, {"endpoint_mode": 2}])
def test_wrong_types_are_ignored_silently(server: ServerProcess, fields: dict[str, Any]) -> None:
    # The whole message is ignored, its valid protocol_version included (the 1.0 rule).
    messages, code = _run(server, [{"type": "configure", "protocol_version": "1.2", **fields}],
                          tone_sequence(HELLO))
    assert code == 1000 and [m["type"] for m in messages][-1] == "final"
    assert all(list(m) == V10_KEYS for m in messages)


@pytest.mark.parametrize("version", ["1.3", "2.0", "1.2 ", "v1.2", ""])
def test_unsupported_version_closes_1002(server: ServerProcess, version: str) -> None:
    messages, code = _run(server, [{"type": "configure", "protocol_version": version}])
    assert messages == [{"type": "error", "code": "unsupported_protocol_version",
                         "message": f"Unsupported protocol version: {version}. "
                                    "Supported: 1.0, 1.1, 1.2"}]
    assert code == 1002


def test_configure_after_audio_is_too_late_and_applies_nothing(server: ServerProcess) -> None:
    async def main() -> list[dict[str, Any]]:
        ws, _ = await open_session(server)
        await ws.send(bytes(9600))
        await ws.send(json.dumps({"type": "configure", "protocol_version": "1.2"}))
        first = json.loads(await asyncio.wait_for(ws.recv(), 10))
        await ws.send(json.dumps({"type": "stop"}))
        return [first, *await collect(ws)]

    messages = asyncio.run(main())
    assert messages[0]["code"] == "configure_too_late"
    assert list(messages[-1]) == V10_KEYS


async def _cut_short(proc: ServerProcess, audio: np.ndarray | None,
                     sigterm: bool) -> tuple[list[dict[str, Any]], int | None]:
    ws = await connect(f"ws://{proc.host}:{proc.port}/v1/ws", compression=None)
    await asyncio.wait_for(ws.recv(), 10)
    await ws.send(json.dumps({"type": "configure", "protocol_version": "1.2",
                              "sample_rate": 16000}))
    if audio is not None:
        await ws.send(pcm16(audio))
    if sigterm:
        await asyncio.sleep(0.5)
        os.kill(proc.proc.pid, signal.SIGTERM)
    messages = await collect(ws)
    await ws.wait_closed()
    return messages, ws.close_code


def test_session_cap_marks_the_final_truncated(tone_model: Path) -> None:
    proc = ServerProcess(tone_model, "--max-session-secs", "1")
    try:
        messages, code = asyncio.run(_cut_short(proc, tone_sequence(HELLO, tail_s=0.1), False))
        empty, empty_code = asyncio.run(_cut_short(proc, None, False))
    finally:
        assert proc.stop() == 0
    assert code == empty_code == 1008
    assert messages[-2]["code"] == "max_session_duration_exceeded"
    (final,) = check_v12(messages)
    assert (final["text"], final["endpoint_reason"], final["truncated"]) == (
        "Привет, мир.", "stop", True)
    # Nothing was being said: nothing was cut short.
    (final,) = check_v12(empty)
    assert final["text"] == "" and final["endpoint_reason"] == "stop" and "truncated" not in final


def test_drain_marks_the_final_truncated(tone_model: Path) -> None:
    proc = ServerProcess(tone_model)
    try:
        messages, code = asyncio.run(_cut_short(proc, tone_sequence(HELLO, tail_s=0.1), True))
    finally:
        proc.stop()
    assert code == 1001
    (final,) = check_v12(messages)
    assert (final["text"], final["endpoint_reason"], final["truncated"]) == (
        "Привет, мир.", "stop", True)


@pytest.mark.parametrize(("silence_ms", "expected"), [
    (300, ["Привет, мир.", "как дела?"]),
    (2000, ["Привет, мир. как дела?"]),
])
def test_min_silence_ms_decides_the_endpoint(server: ServerProcess, silence_ms: int,
                                             expected: list[str]) -> None:
    # Two phrases 0.8 s apart, then 3 s of silence: a final per pause longer than min_silence_ms.
    audio = np.concatenate([tone_sequence(HELLO, tail_s=0.0), silence(0.8),
                            tone_sequence(HOW, lead_s=0.0, tail_s=0.0), silence(3.0)])
    messages, code = _run(server, [{"type": "configure", "protocol_version": "1.2",
                                    "min_silence_ms": silence_ms}], audio)
    finals = check_v12(messages)
    assert code == 1000
    assert [(f["text"], f["endpoint_reason"]) for f in finals] == [
        *((text, "blank") for text in expected), ("", "stop")]


def test_v10_never_repeats_a_partial(server: ServerProcess) -> None:
    # Under 1.2 a partial may differ from the one before only in what is committed (here: the
    # pause, which manual mode does not end); a 1.0 client never sees that, so it must not get
    # the same partial twice in a row.
    async def main() -> list[dict[str, Any]]:
        ws, _ = await open_session(server)
        await ws.send(json.dumps({"type": "configure", "sample_rate": 16000,
                                  "endpoint_mode": "manual"}))
        data = pcm16(np.concatenate([tone_sequence(HELLO), silence(4.0), tone_sequence(HOW)]))
        for start in range(0, len(data), 3200):
            await ws.send(data[start : start + 3200])
            await asyncio.sleep(0.1)
        await ws.send(json.dumps({"type": "stop"}))
        return await collect(ws)

    segments = [m for m in asyncio.run(main()) if m["type"] in ("partial", "final")]
    assert [m["type"] for m in segments].count("final") == 1
    partials = [m["text"] for m in segments if m["type"] == "partial"]
    assert len(partials) >= 2
    assert all(a != b for a, b in pairwise(partials)), partials
