"""JSON wire formats shared by REST, WebSocket and SSE: message builders and control parsing.

Pure functions; byte layout, key order and number formatting follow server.md §0.2-§0.3 and D14.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

import numpy as np

from gigastt.engine.transcript import Transcript, Word

__all__ = [
    "DEFAULT_INPUT_RATE",
    "F32",
    "JSON",
    "MODEL_ID",
    "MODEL_NAME",
    "MODEL_SAMPLE_RATE",
    "PROTOCOL_VERSION",
    "SUPPORTED_FORMATS",
    "SUPPORTED_RATES",
    "Configure",
    "Stop",
    "dumps",
    "format_f32",
    "format_f64",
    "health",
    "models",
    "parse_control",
    "ready",
    "ready_status",
    "rest_error",
    "segment",
    "sse_error",
    "sse_segment",
    "transcribe_body",
    "ws_error",
]

MODEL_ID = "gigaam-v3-e2e-rnnt"
MODEL_NAME = "GigaAM v3 RNN-T"
PROTOCOL_VERSION = "1.0"
SUPPORTED_RATES: tuple[int, ...] = (8000, 16000, 24000, 44100, 48000)
SUPPORTED_FORMATS: tuple[str, ...] = ("wav", "mp3", "m4a", "ogg", "flac")
DEFAULT_INPUT_RATE = 48000
MODEL_SAMPLE_RATE = 16000

_U32_MAX = 2**32 - 1


# --------------------------------------------------------------------------- numbers


def _decompose(text: str) -> tuple[str, int]:
    """Split an unsigned decimal literal into significant digits and the exponent of the first.

    Returns ``("", 0)`` for zero.
    """
    mantissa, _, exp = text.partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = whole + frac
    point = len(whole) + (int(exp) if exp else 0)
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    stripped = stripped.rstrip("0")
    if not stripped:
        return "", 0
    return stripped, point - 1


def _layout(negative: bool, digits: str, exp: int, min_exp: int, max_exp: int) -> str:
    sign = "-" if negative else ""
    if not digits:
        return sign + "0.0"
    n = len(digits)
    if 0 <= exp <= max_exp:
        if n <= exp + 1:
            return sign + digits + "0" * (exp + 1 - n) + ".0"
        return sign + digits[: exp + 1] + "." + digits[exp + 1 :]
    if min_exp <= exp < 0:
        return sign + "0." + "0" * (-exp - 1) + digits
    frac = "." + digits[1:] if n > 1 else ""
    return f"{sign}{digits[0]}{frac}e{'-' if exp < 0 else '+'}{abs(exp)}"


def format_f64(x: float) -> str:
    """Shortest round-trip text of a double, laid out as serde_json does (server.md §0.3).

    Non-finite values become ``null``, as serde_json writes them.
    """
    if not math.isfinite(x):
        return "null"
    # repr() already yields the shortest round-trip digits; only the layout differs.
    digits, exp = _decompose(repr(abs(x)))
    return _layout(math.copysign(1.0, x) < 0, digits, exp, -5, 15)


def format_f32(x: float) -> str:
    """Shortest text that round-trips ``x`` as a 32-bit float (positional for −6 ≤ E ≤ 12)."""
    f = np.float32(x)
    if not np.isfinite(f):
        return "null"
    # repr() of a Python float would give the double's digits (0.9800000190734863); numpy's
    # Dragon4 in unique mode gives the shortest digits for the float32 itself.
    text = np.format_float_scientific(abs(f), unique=True, trim="-")
    digits, exp = _decompose(text)
    return _layout(bool(np.signbit(f)), digits, exp, -6, 12)


# --------------------------------------------------------------------------- writer


class F32(float):
    """A float that the writer serialises with float32 precision (``confidence``)."""

    __slots__ = ()


JSON: TypeAlias = "bool | int | float | str | Sequence[JSON] | Mapping[str, JSON] | None"


def _write(value: JSON, sort_keys: bool, out: list[str]) -> None:
    # bool before int and F32 before float: both are subclasses.
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, F32):
        out.append(format_f32(value))
    elif isinstance(value, float):
        out.append(format_f64(value))
    elif isinstance(value, str):
        # Escapes exactly what serde_json escapes: '"', '\\' and C0 controls (\u00XX lowercase).
        out.append(json.dumps(value, ensure_ascii=False))
    elif isinstance(value, Mapping):
        items = sorted(value.items()) if sort_keys else value.items()
        out.append("{")
        for i, (key, item) in enumerate(items):
            if i:
                out.append(",")
            out.append(json.dumps(key, ensure_ascii=False))
            out.append(":")
            _write(item, sort_keys, out)
        out.append("}")
    else:
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, sort_keys, out)
        out.append("]")


def dumps(value: JSON, *, sort_keys: bool = False) -> str:
    """Compact JSON; objects keep insertion order, or ascending key order with ``sort_keys``.

    ``sort_keys`` reproduces serde_json's ``Map`` (a BTreeMap: byte order of UTF-8 keys, which
    equals code-point order).
    """
    out: list[str] = []
    _write(value, sort_keys, out)
    return "".join(out)


# --------------------------------------------------------------------------- server → client


def _word(word: Word, speaker: int | None, *, widen: bool) -> dict[str, JSON]:
    obj: dict[str, JSON] = {
        "word": word.word,
        "start": float(word.start),
        "end": float(word.end),
        # SSE widens the f32 to f64 before writing (0.9800000190734863); WS/REST do not.
        "confidence": float(np.float32(word.confidence)) if widen else F32(word.confidence),
    }
    if speaker is not None:
        obj["speaker"] = speaker
    return obj


def _words(
    words: Sequence[Word], speakers: Sequence[int | None] | None, *, widen: bool
) -> list[JSON]:
    if speakers is not None and len(speakers) != len(words):
        raise ValueError("speakers must be parallel to words")
    return [
        _word(w, speakers[i] if speakers is not None else None, widen=widen)
        for i, w in enumerate(words)
    ]


def _text(words: Sequence[Word]) -> str:
    return " ".join(w.word for w in words)


def ready(
    *,
    sample_rate: int = DEFAULT_INPUT_RATE,
    supported_rates: Sequence[int] = SUPPORTED_RATES,
    diarization: bool = False,
) -> str:
    """WS ``ready``; ``supported_rates`` omitted when empty, ``diarization`` only when true."""
    obj: dict[str, JSON] = {
        "type": "ready",
        "model": MODEL_ID,
        "sample_rate": sample_rate,
        "version": PROTOCOL_VERSION,
    }
    if supported_rates:
        obj["supported_rates"] = list(supported_rates)
    if diarization:
        obj["diarization"] = True
    return dumps(obj)


def segment(
    kind: Literal["partial", "final"],
    words: Sequence[Word],
    timestamp: float,
    *,
    speakers: Sequence[int | None] | None = None,
) -> str:
    """WS ``partial``/``final``; ``speakers`` (parallel to ``words``) adds ``speaker`` keys."""
    return dumps(
        {
            "type": kind,
            "text": _text(words),
            "words": _words(words, speakers, widen=False),
            "is_final": kind == "final",
            "timestamp": float(timestamp),
        }
    )


def ws_error(code: str, message: str, retry_after_ms: int | None = None) -> str:
    obj: dict[str, JSON] = {"type": "error", "message": message, "code": code}
    if retry_after_ms is not None:
        obj["retry_after_ms"] = retry_after_ms
    return dumps(obj)


def sse_segment(
    kind: Literal["partial", "final"],
    words: Sequence[Word],
    timestamp: float,
    *,
    speakers: Sequence[int | None] | None = None,
) -> str:
    """SSE event payload (without the ``data: `` framing): sorted keys, no ``is_final``."""
    return dumps(
        {
            "type": kind,
            "text": _text(words),
            "words": _words(words, speakers, widen=True),
            "timestamp": float(timestamp),
        },
        sort_keys=True,
    )


def sse_error() -> str:
    return dumps(
        {"code": "inference_error", "message": "Transcription failed.", "type": "error"},
        sort_keys=True,
    )


def rest_error(code: str, message: str, retry_after_ms: int | None = None) -> str:
    obj: dict[str, JSON] = {"code": code, "error": message}
    if retry_after_ms is not None:
        obj["retry_after_ms"] = retry_after_ms
    return dumps(obj, sort_keys=True)


def transcribe_body(transcript: Transcript, *, speakers: Sequence[int | None] | None = None) -> str:
    """``/v1/transcribe`` success body: ``text, words, duration``."""
    return dumps(
        {
            "text": transcript.text,
            "words": _words(transcript.words, speakers, widen=False),
            "duration": float(transcript.duration),
        }
    )


def health(version: str) -> str:
    return dumps({"status": "ok", "model": MODEL_ID, "version": version})


def ready_status(
    *, pool_available: int, pool_total: int, shutting_down: bool = False
) -> tuple[int, str]:
    """``/ready``: the HTTP status and body, decided together (server.md §2.4)."""
    reason: str | None = None
    if shutting_down:
        reason, pool_available = "shutting_down", 0
    elif pool_available <= 0:
        reason, pool_available = "pool_exhausted", 0
    obj: dict[str, JSON] = {
        "status": "not_ready" if reason else "ready",
        "pool_available": pool_available,
        "pool_total": pool_total,
    }
    if reason:
        obj["reason"] = reason
    return (503 if reason else 200), dumps(obj)


def models(
    *,
    version: str,
    encoder: str,
    vocab_size: int,
    pool_size: int,
    pool_available: int,
    supported_formats: Sequence[str] = SUPPORTED_FORMATS,
    supported_rates: Sequence[int] = SUPPORTED_RATES,
    diarization: bool = False,
    sample_rate: int = MODEL_SAMPLE_RATE,
) -> str:
    """``/v1/models`` body in the key order of server.md §2.5."""
    return dumps(
        {
            "id": MODEL_ID,
            "name": MODEL_NAME,
            "version": version,
            "encoder": encoder,
            "vocab_size": vocab_size,
            "sample_rate": sample_rate,
            "pool_size": pool_size,
            "pool_available": pool_available,
            "supported_formats": list(supported_formats),
            "supported_rates": list(supported_rates),
            "diarization": diarization,
        }
    )


# --------------------------------------------------------------------------- client → server


@dataclass(frozen=True, slots=True)
class Stop:
    """``{"type":"stop"}``."""


@dataclass(frozen=True, slots=True)
class Configure:
    """``{"type":"configure",...}``; a field is None when absent (or JSON ``null``)."""

    sample_rate: int | None = None
    diarization: bool | None = None
    protocol_version: str | None = None


class _Invalid(ValueError):
    pass


class _Object(list[tuple[str, object]]):
    """A JSON object as its key/value pairs, so duplicates stay visible."""


def _reject_constant(name: str) -> object:
    # Python accepts NaN/Infinity; serde_json (the reference's parser) does not.
    raise _Invalid(name)


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _Invalid("number out of range")  # serde_json refuses, Python gives inf
    return value


def _parse_int(text: str) -> int | float:
    # serde_json reads "-0" and integers beyond 64 bits as floats; neither is a u32.
    if text == "-0" or len(text.lstrip("-")) > 20:
        return _parse_float(text)
    return int(text)


_CONFIGURE_FIELDS = frozenset({"sample_rate", "diarization", "protocol_version"})


def parse_control(text: str) -> Stop | Configure | None:
    """Parse a client text frame; None for anything the session must silently ignore (§4.2).

    Mirrors serde's internally tagged enum: unknown fields are ignored, a field of the wrong
    type or a repeated known field makes the whole message invalid, ``null`` means absent.
    """
    try:
        root = json.loads(
            text,
            object_pairs_hook=_Object,
            parse_constant=_reject_constant,
            parse_float=_parse_float,
            parse_int=_parse_int,
        )
    except (ValueError, RecursionError):
        return None
    if not isinstance(root, _Object) or _has_lone_surrogate(root):
        return None
    kinds = [value for key, value in root if key == "type"]
    if len(kinds) != 1:
        return None
    if kinds[0] == "stop":
        return Stop()  # a unit variant: serde skips every other field unchecked
    if kinds[0] != "configure":
        return None
    fields: dict[str, object] = {}
    for key, value in root:
        if key in _CONFIGURE_FIELDS:
            if key in fields:
                return None
            fields[key] = value
    rate = fields.get("sample_rate")
    diar = fields.get("diarization")
    version = fields.get("protocol_version")
    # type() rather than isinstance(): JSON true is a Python int, and 16000.0 must not pass.
    if rate is not None and not (type(rate) is int and 0 <= rate <= _U32_MAX):
        return None
    if diar is not None and type(diar) is not bool:
        return None
    if version is not None and not isinstance(version, str):
        return None
    return Configure(sample_rate=rate, diarization=diar, protocol_version=version)


def _has_lone_surrogate(value: object) -> bool:
    # json.loads turns an unpaired "\ud800" escape into a lone surrogate; serde_json buffers
    # the whole message and rejects it, and such a string could not be echoed back as UTF-8.
    if isinstance(value, str):
        return any("\ud800" <= ch <= "\udfff" for ch in value)
    if isinstance(value, _Object):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value)
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False
