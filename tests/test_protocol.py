"""Wire-format tests: number layout, exact message bytes, control-message parsing.
"""

from __future__ import annotations

import json
import math
import random
import struct

import numpy as np
import pytest

from gigastt import protocol
from gigastt.engine.transcript import Transcript, Word
from gigastt.errors import (
    REST_ERRORS,
    ErrorCode,
    checkout_retry_ms,
    invalid_sample_rate,
    rest_error_response,
    unsupported_protocol_version,
    ws_error_message,
)
from gigastt.protocol import (
    F32,
    Configure,
    Stop,
    dumps,
    format_f32,
    format_f64,
    parse_control,
)

WORD = Word("привет", 0.48, 0.8, float(np.float32(0.97)))
WORDS = (WORD, Word("как", 0.88, 1.12, float(np.float32(0.98))))

# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (2.0, "2.0"),
        (0.0, "0.0"),
        (-0.0, "-0.0"),
        (0.00001, "0.00001"),
        (1e15, "1000000000000000.0"),
        (1e-6, "1e-6"),
        (1.5e-7, "1.5e-7"),
        (1e16, "1e+16"),
        (0.12000000000000001, "0.12000000000000001"),
        (3 * 0.04, "0.12"),
        (1712700000.123, "1712700000.123"),
        (-2.5, "-2.5"),
        (123456789012345.67, "123456789012345.67"),
        (1.2345e20, "1.2345e+20"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
    ],
)
def test_format_f64(value: float, text: str) -> None:
    assert format_f64(value) == text


def test_format_f64_non_finite_is_null() -> None:
    assert format_f64(math.inf) == "null"
    assert format_f64(math.nan) == "null"


def test_format_f64_round_trips_random_doubles() -> None:
    rng = random.Random(7)
    for _ in range(5000):
        x = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
        if math.isfinite(x):
            text = format_f64(x)
            assert float(text) == x
            assert json.loads(text) == x
            digits = text.lstrip("-").split("e")[0].replace(".", "").strip("0")
            assert len(digits) <= len(repr(abs(x)).split("e")[0].replace(".", "").strip("0"))


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.98, "0.98"),
        (float(np.float32(0.98)), "0.98"),
        (0.97, "0.97"),
        (1.0, "1.0"),
        (0.0, "0.0"),
        (1e-6, "0.000001"),
        (1e-7, "1e-7"),
        (1e12, "1000000000000.0"),
        (1e13, "1e+13"),
        (1 / 3, "0.33333334"),
        (3.4028234663852886e38, "3.4028235e+38"),
    ],
)
def test_format_f32(value: float, text: str) -> None:
    assert format_f32(value) == text


def test_format_f32_round_trips_random_floats() -> None:
    rng = random.Random(11)
    for _ in range(5000):
        f = np.frombuffer(rng.getrandbits(32).to_bytes(4, "little"), dtype=np.float32)[0]
        if np.isfinite(f):
            assert np.float32(float(format_f32(float(f)))) == f


def test_sse_confidence_is_widened() -> None:
    assert format_f64(float(np.float32(0.98))) == "0.9800000190734863"


# --------------------------------------------------------------------------- writer


def test_dumps_compact_and_ordered() -> None:
    assert (
        dumps({"b": 1, "a": [True, False, None], "c": "x"})
        == '{"b":1,"a":[true,false,null],"c":"x"}'
    )
    assert dumps({"b": 1, "a": 2, "é": 3, "Z": 4}, sort_keys=True) == '{"Z":4,"a":2,"b":1,"é":3}'
    assert dumps({"x": {"b": 1, "a": 2}}, sort_keys=True) == '{"x":{"a":2,"b":1}}'
    assert dumps([1.0, F32(0.98), 2]) == "[1.0,0.98,2]"


def test_dumps_string_escaping_matches_serde_json() -> None:
    # serde_json escapes '"', '\\' and C0 controls (\b \f \n \r \t, else \u00XX lowercase);
    # it leaves DEL, '/', and all non-ASCII (incl. U+2028) raw.
    s = 'a"b\\c\nd\re\tf\bg\fh\x00i\x1fj\x7fk/lё\u2028'
    assert dumps(s) == '"a\\"b\\\\c\\nd\\re\\tf\\bg\\fh\\u0000i\\u001fj\x7fk/lё\u2028"'
    assert json.loads(dumps(s)) == s


# --------------------------------------------------------------------------- messages


def test_ready_exact() -> None:
    # D25: the three trailing keys go to every client; version stays "1.0".
    limits = {"max_session_secs": 3600, "idle_timeout_secs": 300}
    tail = ',"min_protocol_version":"1.0","max_session_secs":3600,"idle_timeout_secs":300}'
    assert protocol.ready(**limits) == (
        '{"type":"ready","model":"gigaam-v3-e2e-rnnt","sample_rate":48000,"version":"1.0",'
        '"supported_rates":[8000,16000,24000,44100,48000]' + tail
    )
    assert protocol.ready(diarization=True, **limits).endswith(',"diarization":true' + tail)
    assert protocol.ready(supported_rates=(), **limits) == (
        '{"type":"ready","model":"gigaam-v3-e2e-rnnt","sample_rate":48000,"version":"1.0"' + tail
    )


def test_segments_exact() -> None:
    assert protocol.segment("partial", WORDS, 1712700000.123) == (
        '{"type":"partial","text":"привет как","words":['
        '{"word":"привет","start":0.48,"end":0.8,"confidence":0.97},'
        '{"word":"как","start":0.88,"end":1.12,"confidence":0.98}],'
        '"is_final":false,"timestamp":1712700000.123}'
    )
    assert protocol.segment("final", [], 2.0) == (
        '{"type":"final","text":"","words":[],"is_final":true,"timestamp":2.0}'
    )
    for kind in ("partial", "final"):
        msg = json.loads(protocol.segment(kind, WORDS, 1.0))
        assert "version" not in msg and "speaker" not in msg["words"][0]


def test_segment_speaker_only_when_set() -> None:
    out = protocol.segment("final", WORDS, 1.0, speakers=[1, None])
    assert '"confidence":0.97,"speaker":1}' in out
    assert '"confidence":0.98}' in out
    with pytest.raises(ValueError):
        protocol.segment("final", WORDS, 1.0, speakers=[1])


def test_ws_error_exact() -> None:
    assert protocol.ws_error("timeout", "Server busy, try again later", 30000) == (
        '{"type":"error","message":"Server busy, try again later","code":"timeout",'
        '"retry_after_ms":30000}'
    )
    err = protocol.ws_error("configure_too_late", "x")
    assert err == '{"type":"error","message":"x","code":"configure_too_late"}'
    assert "version" not in err


def test_sse_exact() -> None:
    assert protocol.sse_segment("partial", [WORD], 1712700000.123) == (
        '{"text":"привет","timestamp":1712700000.123,"type":"partial","words":['
        '{"confidence":0.9700000286102295,"end":0.8,"start":0.48,"word":"привет"}]}'
    )
    out = protocol.sse_segment("final", [WORDS[1]], 3.0, speakers=[0])
    assert out == (
        '{"text":"как","timestamp":3.0,"type":"final","words":['
        '{"confidence":0.9800000190734863,"end":1.12,"speaker":0,"start":0.88,"word":"как"}]}'
    )
    assert protocol.sse_error() == (
        '{"code":"inference_error","message":"Transcription failed.","type":"error"}'
    )


def test_rest_bodies_exact() -> None:
    assert protocol.rest_error("empty_body", "Empty request body") == (
        '{"code":"empty_body","error":"Empty request body"}'
    )
    assert protocol.rest_error("timeout", "Server busy, try again later", 30000) == (
        '{"code":"timeout","error":"Server busy, try again later","retry_after_ms":30000}'
    )
    assert protocol.transcribe_body(Transcript("привет", (WORD,), 2.5)) == (
        '{"text":"привет","words":[{"word":"привет","start":0.48,"end":0.8,"confidence":0.97}],'
        '"duration":2.5}'
    )
    assert protocol.health("0.1.0") == (
        '{"status":"ok","model":"gigaam-v3-e2e-rnnt","version":"0.1.0"}'
    )


def test_ready_status() -> None:
    assert protocol.ready_status(pool_available=3, pool_total=4) == (
        200,
        '{"status":"ready","pool_available":3,"pool_total":4}',
    )
    assert protocol.ready_status(pool_available=0, pool_total=4) == (
        503,
        '{"status":"not_ready","pool_available":0,"pool_total":4,"reason":"pool_exhausted"}',
    )
    assert protocol.ready_status(pool_available=2, pool_total=4, shutting_down=True) == (
        503,
        '{"status":"not_ready","pool_available":0,"pool_total":4,"reason":"shutting_down"}',
    )


def test_models_exact() -> None:
    out = protocol.models(
        version="2.0.5", encoder="int8", vocab_size=1025, pool_size=4, pool_available=4
    )
    assert out == (
        '{"id":"gigaam-v3-e2e-rnnt","name":"GigaAM v3 RNN-T","version":"2.0.5","encoder":"int8",'
        '"vocab_size":1025,"sample_rate":16000,"pool_size":4,"pool_available":4,'
        '"supported_formats":["wav","mp3","m4a","ogg","flac"],'
        '"supported_rates":[8000,16000,24000,44100,48000],"diarization":false}'
    )


# --------------------------------------------------------------------------- control


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"type":"stop"}', Stop()),
        (' {"type" : "stop", "extra": [1, {"a": 1, "a": 2}]} ', Stop()),
        ('{"type":"stop","sample_rate":"x","sample_rate":1}', Stop()),
        ('{"type":"configure","sample_rate":8000}', Configure(sample_rate=8000)),
        ('{"type":"configure","diarization":true}', Configure(diarization=True)),
        ('{"type":"configure","protocol_version":"1.0"}', Configure(protocol_version="1.0")),
        ('{"type":"configure"}', Configure()),
        ('{"sample_rate":0,"type":"configure"}', Configure(sample_rate=0)),
        ('{"type":"configure","sample_rate":4294967295}', Configure(sample_rate=4294967295)),
        ('{"type":"configure","sample_rate":null,"diarization":null}', Configure()),
        (
            '{"type":"configure","sample_rate":16000,"diarization":false,"protocol_version":"2"}',
            Configure(16000, False, "2"),
        ),
        ('{"type":"configure","unknown":{"x":1},"sample_rate":7000}', Configure(7000)),
    ],
)
def test_parse_control_valid(text: str, expected: object) -> None:
    assert parse_control(text) == expected


def test_parse_control_absent_fields_are_none() -> None:
    msg = parse_control('{"type":"configure","sample_rate":8000}')
    assert isinstance(msg, Configure)
    assert msg.diarization is None and msg.protocol_version is None


@pytest.mark.parametrize(
    "text",
    [
        "not json at all {{",
        "",
        "[]",
        '["stop"]',
        '"stop"',
        "null",
        "{}",
        '{"type":"Stop"}',
        '{"type":"start"}',
        '{"type":1}',
        '{"type":null}',
        '{"type":"stop","type":"stop"}',
        '{"type":"configure","sample_rate":"16000"}',
        '{"type":"configure","sample_rate":16000.0}',
        '{"type":"configure","sample_rate":1.6e4}',
        '{"type":"configure","sample_rate":-1}',
        '{"type":"configure","sample_rate":-0}',
        '{"type":"configure","sample_rate":4294967296}',
        '{"type":"configure","sample_rate":true}',
        '{"type":"configure","sample_rate":99999999999999999999999}',
        '{"type":"configure","diarization":1}',
        '{"type":"configure","diarization":"true"}',
        '{"type":"configure","protocol_version":1.0}',
        '{"type":"configure","sample_rate":8000,"sample_rate":16000}',
        '{"type":"configure","diarization":true,"diarization":true}',
        '{"type":"configure","x":NaN}',
        '{"type":"configure","x":1e400}',
        '{"type":"configure","protocol_version":"\\ud800"}',
        '{"type":"configure","x":"\\udc00"}',
        '{"type":"stop"} trailing',
    ],
)
def test_parse_control_invalid(text: str) -> None:
    assert parse_control(text) is None


def test_parse_control_surrogate_pair_is_fine() -> None:
    assert parse_control('{"type":"configure","protocol_version":"\\ud83d\\ude00"}') == (
        Configure(protocol_version="\U0001f600")
    )


def test_parse_control_deep_nesting_does_not_raise() -> None:
    assert parse_control('{"type":"stop","x":' + "[" * 100_000 + "]" * 100_000 + "}") is None


@pytest.mark.parametrize("depth", [300, 400, 900, 100_000])
@pytest.mark.parametrize(("open_", "close"), [("[", "]"), ('{"a":', "}")])
def test_parse_control_too_deep_is_ignored_without_recursion_error(
    depth: int, open_: str, close: str
) -> None:
    # Deep enough for a recursive walk of the parsed tree to overflow the Python stack, yet
    # shallow enough for json.loads to build that tree (the 400-deep case of the bug report).
    leaf = "" if open_ == "[" else "1"
    text = '{"type":"configure","x":' + open_ * depth + leaf + close * depth + "}"
    assert parse_control(text) is None
    unclosed = '{"type":"configure","x":' + open_ * depth
    assert parse_control(unclosed) is None


def test_parse_control_depth_limit_is_serde_jsons() -> None:
    # serde_json refuses a 128th level of nesting (the root object counts): 126 arrays inside
    # the root still parse, 127 do not.
    def nested(n: int) -> str:
        return '{"type":"configure","x":' + "[" * n + "]" * n + "}"

    assert parse_control(nested(126)) == Configure()
    assert parse_control(nested(127)) is None
    assert parse_control('{"type":"stop","x":' + "[" * 127 + "]" * 127 + "}") is None


def test_parse_control_lone_surrogate_deep_inside_is_rejected() -> None:
    assert parse_control('{"type":"stop","a":[{"b":["\\udc00"]}]}') is None
    assert parse_control('{"type":"stop","\\ud800":1}') is None


# --------------------------------------------------------------------------- catalogue


def test_error_catalogue() -> None:
    assert rest_error_response(ErrorCode.ORIGIN_DENIED) == (
        403,
        '{"code":"origin_denied","error":"Origin not allowed"}',
    )
    assert rest_error_response(ErrorCode.TIMEOUT, checkout_retry_ms(30)) == (
        503,
        '{"code":"timeout","error":"Server busy, try again later","retry_after_ms":30000}',
    )
    assert rest_error_response(ErrorCode.RATE_LIMITED)[0] == 429
    assert rest_error_response(ErrorCode.PAYLOAD_TOO_LARGE) == (
        413,
        '{"code":"payload_too_large","error":"Request body exceeds the configured size limit"}',
    )
    assert checkout_retry_ms(10**9) == 4294967295
    assert ws_error_message(ErrorCode.TIMEOUT, 30000) == (
        '{"type":"error","message":"Server busy, try again later","code":"timeout",'
        '"retry_after_ms":30000}'
    )
    assert ws_error_message(ErrorCode.MAX_SESSION_DURATION_EXCEEDED) == (
        '{"type":"error","message":"Maximum session duration exceeded",'
        '"code":"max_session_duration_exceeded"}'
    )
    assert invalid_sample_rate(7000) == (
        '{"type":"error","message":"Unsupported sample rate: 7000Hz. '
        'Supported: [8000, 16000, 24000, 44100, 48000]","code":"invalid_sample_rate"}'
    )
    assert unsupported_protocol_version("2.0") == (
        '{"type":"error","message":"Unsupported protocol version: 2.0. Supported: 1.0, 1.1, 1.2",'
        '"code":"unsupported_protocol_version"}'
    )
    for code, (status, message) in REST_ERRORS.items():
        assert 400 <= status < 600 and message and code.value.islower()
