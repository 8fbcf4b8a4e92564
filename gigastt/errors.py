"""The error catalogue: every client-visible error code with its HTTP status and fixed message.

Messages are client-safe constants (docs/api.md "Errors"); internal detail is only ever logged.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

from gigastt import protocol

__all__ = [
    "REST_ERRORS",
    "WS_MESSAGES",
    "ErrorCode",
    "RestError",
    "checkout_retry_ms",
    "invalid_sample_rate",
    "rest_error_response",
    "unsupported_protocol_version",
    "ws_error_message",
]


class ErrorCode(StrEnum):
    EMPTY_BODY = "empty_body"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    TRANSCRIPTION_ERROR = "transcription_error"
    INVALID_AUDIO = "invalid_audio"
    UNSUPPORTED_SAMPLE_RATE = "unsupported_sample_rate"
    INTERNAL = "internal"
    TIMEOUT = "timeout"
    POOL_CLOSED = "pool_closed"
    SHUTTING_DOWN = "shutting_down"
    ORIGIN_DENIED = "origin_denied"
    RATE_LIMITED = "rate_limited"
    UNAUTHORIZED = "unauthorized"
    METRICS_DISABLED = "metrics_disabled"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    SERVER_BUSY = "server_busy"
    UNSUPPORTED_FORMAT = "unsupported_format"
    CONFIGURE_TOO_LATE = "configure_too_late"
    UNSUPPORTED_PROTOCOL_VERSION = "unsupported_protocol_version"
    INVALID_SAMPLE_RATE = "invalid_sample_rate"
    INFERENCE_ERROR = "inference_error"
    INFERENCE_PANIC = "inference_panic"
    MAX_SESSION_DURATION_EXCEEDED = "max_session_duration_exceeded"
    INVALID_ENDPOINT_MODE = "invalid_endpoint_mode"
    INVALID_MIN_SILENCE_MS = "invalid_min_silence_ms"
    INVALID_COMMIT_POLICY = "invalid_commit_policy"
    VAD_NOT_LOADED = "vad_not_loaded"
    INVALID_HOTWORDS = "invalid_hotwords"
    INVALID_VAD = "invalid_vad"
    TOO_MANY_HOTWORDS = "too_many_hotwords"
    HOTWORD_PHRASE_TOO_LONG = "hotword_phrase_too_long"


class RestError(NamedTuple):
    status: int
    message: str


E = ErrorCode

REST_ERRORS: dict[ErrorCode, RestError] = {
    E.EMPTY_BODY: RestError(400, "Empty request body"),
    E.PAYLOAD_TOO_LARGE: RestError(413, "Request body exceeds the configured size limit"),
    E.TRANSCRIPTION_ERROR: RestError(422, "Transcription failed. Check audio format."),
    E.INVALID_AUDIO: RestError(
        422,
        "Failed to decode audio file. Check format (WAV, MP3, M4A, OGG, FLAC supported).",
    ),
    # A precise reason for the one refusal a client can act on by resampling (D32).
    E.UNSUPPORTED_SAMPLE_RATE: RestError(
        422, "Sample rate outside the supported range 8000-384000 Hz"
    ),
    E.INTERNAL: RestError(500, "Internal server error"),
    E.TIMEOUT: RestError(503, "Server busy, try again later"),
    E.POOL_CLOSED: RestError(503, "Server is shutting down"),
    E.SHUTTING_DOWN: RestError(503, "Server shutting down"),
    E.ORIGIN_DENIED: RestError(403, "Origin not allowed"),
    E.RATE_LIMITED: RestError(429, "Too many requests"),
    # D23: the same text whether the key was missing or wrong.
    E.UNAUTHORIZED: RestError(401, "Missing or invalid API key"),
    E.METRICS_DISABLED: RestError(404, "metrics endpoint disabled"),
    # The connection cap's 503 (D4 in docs/decisions.md).
    E.TOO_MANY_CONNECTIONS: RestError(503, "Too many open connections"),
    E.SERVER_BUSY: RestError(503, "Too many request bodies in flight, try again later"),
    E.UNSUPPORTED_FORMAT: RestError(
        400, "Unsupported format: use format=json, text, srt or vtt, at most once"),
    # D28: the per-request VAD switch of the file routes.
    E.INVALID_VAD: RestError(400, "Invalid vad: use vad=true or vad=false, at most once"),
    # D29: a request's phrase list (`hotwords=`, the OpenAI `prompt`); the bounds are the WS's.
    E.TOO_MANY_HOTWORDS: RestError(
        400, f"Too many hotwords: at most {protocol.MAX_HOTWORDS} phrases per request"),
    E.HOTWORD_PHRASE_TOO_LONG: RestError(
        400, f"A hotword phrase is too long: at most {protocol.MAX_HOTWORD_CHARS} characters"),
}

# The text that names an over-long file where the answer carries one besides its code: a job's
# failure, and the event that ends a stream when decoding passes the cap (D30).
AUDIO_TOO_LONG = "The audio is longer than the server's maximum (--max-audio-secs)."

# Fixed WS texts; the two that echo a client value are built by the functions below.
WS_MESSAGES: dict[ErrorCode, str] = {
    E.TIMEOUT: "Server busy, try again later",
    E.POOL_CLOSED: "Server is shutting down",
    E.CONFIGURE_TOO_LATE: "Configure must be sent before first audio frame",
    E.INFERENCE_ERROR: "Inference failed. Please check audio format.",
    E.INFERENCE_PANIC: "Inference failed unexpectedly. Session reset.",
    E.MAX_SESSION_DURATION_EXCEEDED: "Maximum session duration exceeded",
    E.INTERNAL: "Internal serialization error",
    # Protocol 1.2 configure fields (docs/api.md "GET /v1/ws"); the message names the allowed
    # values, never echoes the client's.
    E.INVALID_ENDPOINT_MODE: "Unsupported endpoint_mode. Supported: "
    + ", ".join(protocol.ENDPOINT_MODES),
    E.INVALID_MIN_SILENCE_MS: "min_silence_ms must be a whole number from "
    f"{protocol.MIN_SILENCE_MS_RANGE[0]} to {protocol.MIN_SILENCE_MS_RANGE[1]}",
    E.INVALID_COMMIT_POLICY: "Unsupported commit_policy. Supported: "
    + ", ".join(protocol.COMMIT_POLICIES),
    E.VAD_NOT_LOADED: "No VAD model is loaded on this server",
    E.INVALID_HOTWORDS: f"hotwords must be a list of at most {protocol.MAX_HOTWORDS} phrases of "
    f"1 to {protocol.MAX_HOTWORD_CHARS} characters without control characters",
}

_U32_MAX = 2**32 - 1


def checkout_retry_ms(checkout_timeout_secs: int) -> int:
    """The ``retry_after_ms`` hint: the checkout timeout in ms, saturating at u32 max."""
    return min(max(checkout_timeout_secs, 0) * 1000, _U32_MAX)


def rest_error_response(code: ErrorCode, retry_after_ms: int | None = None) -> tuple[int, str]:
    """HTTP status and JSON body (sorted keys) for a REST error code."""
    status, message = REST_ERRORS[code]
    return status, protocol.rest_error(code.value, message, retry_after_ms)


def ws_error_message(code: ErrorCode, retry_after_ms: int | None = None) -> str:
    """The WS ``error`` text frame for a code with a fixed message."""
    return protocol.ws_error(code.value, WS_MESSAGES[code], retry_after_ms)


def unsupported_protocol_version(version: str) -> str:
    supported = ", ".join(protocol.PROTOCOL_VERSIONS)
    message = f"Unsupported protocol version: {version}. Supported: {supported}"
    return protocol.ws_error(E.UNSUPPORTED_PROTOCOL_VERSION.value, message)


def invalid_sample_rate(rate: int) -> str:
    # The list is rendered as the reference's Rust Debug output: "[8000, 16000, ...]".
    supported = "[" + ", ".join(map(str, protocol.SUPPORTED_RATES)) + "]"
    message = f"Unsupported sample rate: {rate}Hz. Supported: {supported}"
    return protocol.ws_error(E.INVALID_SAMPLE_RATE.value, message)
