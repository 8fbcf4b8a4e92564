"""JSON wire formats shared by REST, WebSocket and SSE: message builders and control parsing.

Pure functions; byte layout, key order and number formatting follow docs/api.md
"JSON conventions" (D14 in docs/decisions.md).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

import numpy as np

from gigastt.engine.tokenizer import FRAME_SECONDS
from gigastt.engine.transcript import Transcript, Word

__all__ = [
    "COMMIT_POLICIES",
    "DEFAULT_INPUT_RATE",
    "ENDPOINT_MODES",
    "F32",
    "JSON",
    "MAX_HOTWORDS",
    "MAX_HOTWORD_CHARS",
    "MIN_PROTOCOL_VERSION",
    "MIN_SILENCE_MS_RANGE",
    "MODEL_ID",
    "MODEL_NAME",
    "MODEL_SAMPLE_RATE",
    "PROTOCOL_VERSION",
    "PROTOCOL_VERSIONS",
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
    "segment_v12",
    "sse_error",
    "sse_segment",
    "transcribe_body",
    "ws_error",
]

MODEL_ID = "gigaam-v3-e2e-rnnt"
MODEL_NAME = "GigaAM v3 RNN-T"
PROTOCOL_VERSION = "1.0"
MIN_PROTOCOL_VERSION = "1.0"
# "1.1" only added cancellation errors, so it means 1.0 here (D25 in docs/decisions.md).
PROTOCOL_VERSIONS: tuple[str, ...] = ("1.0", "1.1", "1.2")
# The same values as the live recogniser's (engine/streaming.py), which this module does not
# import: it would pull the inference runtime into every wire-format user.
ENDPOINT_MODES: tuple[str, ...] = ("auto", "assistant", "manual")
COMMIT_POLICIES: tuple[str, ...] = ("auto", "stable_prefix", "on_finalize")
MIN_SILENCE_MS_RANGE = (100, 10000)
# Bounds on a session's phrase list: the decoder's boost work grows with it (docs/api.md); the
# same as a REST request's (config.HOTWORDS_REQUEST_MAX, HOTWORD_MAX_CHARS; D29).
MAX_HOTWORDS = 64
MAX_HOTWORD_CHARS = 64
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
    """Shortest round-trip text of a double, laid out as serde_json does.

    See docs/api.md "JSON conventions".

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
    max_session_secs: int,
    idle_timeout_secs: int,
    model: str = MODEL_ID,
) -> str:
    """WS ``ready``; ``supported_rates`` omitted when empty, ``diarization`` only when true;
    ``model`` names the head served (D29).

    The three trailing keys are the same for every client (D25): ``ready`` precedes any
    ``configure``, so it cannot depend on the version the client picks.
    """
    obj: dict[str, JSON] = {
        "type": "ready",
        "model": model,
        "sample_rate": sample_rate,
        "version": PROTOCOL_VERSION,
    }
    if supported_rates:
        obj["supported_rates"] = list(supported_rates)
    if diarization:
        obj["diarization"] = True
    obj["min_protocol_version"] = MIN_PROTOCOL_VERSION
    obj["max_session_secs"] = max_session_secs
    obj["idle_timeout_secs"] = idle_timeout_secs
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


def segment_v12(
    kind: Literal["partial", "final"],
    words: Sequence[Word],
    timestamp: float,
    *,
    committed: int,
    reason: str | None = None,
    truncated: bool = False,
    speakers: Sequence[int | None] | None = None,
) -> str:
    """WS ``partial``/``final`` under protocol 1.2 (docs/api.md "Protocol 1.2").

    ``committed`` counts the leading words that will not change any more (ignored on a final,
    which commits everything); ``reason`` is the final's ``endpoint_reason``.
    """
    text = _text(words)
    if kind == "final":
        if reason is None:
            raise ValueError("a final needs its endpoint reason")
        prefix = text
    else:
        prefix = _text(words[: max(0, min(committed, len(words)))])
    # text is the words joined by spaces, so the committed words' text is its prefix and the
    # tentative rest begins with the space between them.
    obj: dict[str, JSON] = {
        "type": kind,
        "text": text,
        "committed": prefix,
        "tentative": text[len(prefix) :],
        "words": _words(words, speakers, widen=False),
        "is_final": kind == "final",
    }
    if kind == "final":
        obj["speech_final"] = True
        obj["endpoint_reason"] = reason
        if truncated:
            obj["truncated"] = True
    obj["timestamp"] = float(timestamp)
    if words:
        obj["confidence"] = F32(_mean_confidence(words))
    return dumps(obj)


def _mean_confidence(words: Sequence[Word]) -> float:
    """Word confidences weighted by duration.

    A word lasts from its first token's frame to the end of its last token's frame, so a
    one-token word (``end == start``) still weighs one encoder frame.
    """
    weights = [max(0.0, w.end - w.start) + FRAME_SECONDS for w in words]
    total = math.fsum(float(np.float32(w.confidence)) * d for w, d in zip(words, weights,
                                                                            strict=True))
    return total / math.fsum(weights)


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


def sse_error(code: str = "inference_error", message: str = "Transcription failed.") -> str:
    return dumps({"code": code, "message": message, "type": "error"}, sort_keys=True)


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


def health(version: str, *, vad: bool = False, model: str = MODEL_ID) -> str:
    """``/health``; a last key ``"vad":true`` only when the VAD is loaded (D28), so a server
    without it answers as before; ``model`` names the head served (D29)."""
    extra: dict[str, JSON] = {"vad": True} if vad else {}
    return dumps({"status": "ok", "model": model, "version": version, **extra})


def ready_status(
    *, pool_available: int, pool_total: int, shutting_down: bool = False
) -> tuple[int, str]:
    """``/ready``: the HTTP status and body, decided together (docs/api.md "GET /ready")."""
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
    capacity: int | None = None,
    vad: bool = False,
    model: str = MODEL_ID,
    name: str = MODEL_NAME,
) -> str:
    """``/v1/models`` body in the key order of docs/api.md "GET /v1/models"; ``model`` and
    ``name`` are the head served (D29).

    ``"vad":true`` (D28: the Silero VAD is loaded) follows ``diarization`` only when loaded;
    ``capacity`` (D27: the live sessions measured by ``--pool-size auto``) trails, only when set.
    """
    extra: dict[str, JSON] = {"vad": True} if vad else {}
    if capacity is not None:
        extra["capacity"] = capacity
    return dumps(
        {
            "id": model,
            "name": name,
            "version": version,
            "encoder": encoder,
            "vocab_size": vocab_size,
            "sample_rate": sample_rate,
            "pool_size": pool_size,
            "pool_available": pool_available,
            "supported_formats": list(supported_formats),
            "supported_rates": list(supported_rates),
            "diarization": diarization,
            **extra,
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
    endpoint_mode: str | None = None
    min_silence_ms: int | None = None
    commit_policy: str | None = None
    vad: bool | None = None
    # The JSON array as given; invalid_field() checks that it is a list of phrases.
    hotwords: tuple[object, ...] | None = None

    def invalid_field(self, *, vad_loaded: bool = False) -> str | None:
        """The error code of the first field with a bad value, or None when all are good.

        Checked before anything is applied: a configure is applied whole or not at all
        (docs/api.md "GET /v1/ws"). ``protocol_version`` is not checked here: an unsupported
        one ends the session instead (D25).
        """
        if self.sample_rate is not None and self.sample_rate not in SUPPORTED_RATES:
            return "invalid_sample_rate"
        if self.endpoint_mode is not None and self.endpoint_mode not in ENDPOINT_MODES:
            return "invalid_endpoint_mode"
        low, high = MIN_SILENCE_MS_RANGE
        if self.min_silence_ms is not None and not low <= self.min_silence_ms <= high:
            return "invalid_min_silence_ms"
        if self.commit_policy is not None and self.commit_policy not in COMMIT_POLICIES:
            return "invalid_commit_policy"
        if self.vad and not vad_loaded:
            return "vad_not_loaded"
        if self.hotwords is not None and not _phrase_list(self.hotwords):
            return "invalid_hotwords"
        return None


def _phrase_list(items: tuple[object, ...]) -> bool:
    """At most MAX_HOTWORDS phrases: strings of 1..MAX_HOTWORD_CHARS characters, not blank,
    without control characters (a phrase is one line of a hotwords file)."""
    return len(items) <= MAX_HOTWORDS and all(
        isinstance(item, str) and item.strip() and len(item) <= MAX_HOTWORD_CHARS
        and not any(ch < " " or "\x7f" <= ch <= "\x9f" for ch in item)
        for item in items)


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


# serde_json's recursion limit: a message nested deeper (arrays and objects, the root object
# included) is invalid JSON to the reference, so it is ignored here too.
MAX_DEPTH = 127

_CONFIGURE_FIELDS = frozenset({"sample_rate", "diarization", "protocol_version", "endpoint_mode",
                               "min_silence_ms", "commit_policy", "vad", "hotwords"})


def parse_control(text: str) -> Stop | Configure | None:
    """Parse a client text frame; None for anything the session must silently ignore.

    See docs/api.md "GET /v1/ws".

    Mirrors serde's internally tagged enum: unknown fields are ignored, a field of the wrong
    type or a repeated known field makes the whole message invalid, ``null`` means absent.
    Values are checked for type only; ``Configure.invalid_field`` judges them. ``punctuation``
    and ``itn`` are accepted and ignored like any unknown field.
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
    if not isinstance(root, _Object) or not _acceptable(root):
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
    mode, policy = fields.get("endpoint_mode"), fields.get("commit_policy")
    silence, vad = fields.get("min_silence_ms"), fields.get("vad")
    hotwords = fields.get("hotwords")
    if any(v is not None and not isinstance(v, str) for v in (mode, policy)):
        return None
    # Any whole number has the right type, so -1 or 100000 is answered with the range error.
    if silence is not None and type(silence) is not int:
        return None
    if vad is not None and type(vad) is not bool:
        return None
    # An array, however bad its items, is a hotwords list to judge (invalid_hotwords); an
    # object (_Object, also a list) or a scalar is the wrong type.
    if hotwords is not None and (type(hotwords) is not list):
        return None
    return Configure(
        sample_rate=rate, diarization=diar, protocol_version=version,
        endpoint_mode=mode if isinstance(mode, str) else None,
        min_silence_ms=silence if type(silence) is int else None,
        commit_policy=policy if isinstance(policy, str) else None,
        vad=vad if type(vad) is bool else None,
        hotwords=tuple(hotwords) if isinstance(hotwords, list) else None,
    )


def _acceptable(root: _Object) -> bool:
    """False if serde_json would refuse the tree: too deep, or a lone surrogate anywhere."""
    # An explicit stack, not recursion: the client picks the depth, and malformed messages are
    # ignored however deep they are (docs/api.md), never allowed to overflow the Python stack.
    stack: list[tuple[object, int]] = [(root, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            # json.loads turns an unpaired "\ud800" escape into a lone surrogate; serde_json
            # rejects it, and such a string could not be echoed back as UTF-8.
            if any("\ud800" <= ch <= "\udfff" for ch in item):
                return False
        elif isinstance(item, list):  # an array, or an object (_Object: its key/value pairs)
            if depth > MAX_DEPTH:
                return False
            values = (v for pair in item for v in pair) if isinstance(item, _Object) else item
            stack.extend((v, depth + 1) for v in values)
    return True
