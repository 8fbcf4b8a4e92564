"""Every setting in one place: defaults, flags, environment variables, config file, validation.

Precedence is built-in default < ``--config`` file < environment < command-line flag (decision D12).
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import math
import os
import stat
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9876
# `gigastt stream` (gigastt/client.py): where it connects, and the audio in each frame it sends.
STREAM_URL = f"ws://{DEFAULT_HOST}:{DEFAULT_PORT}/v1/ws"
STREAM_FRAME_MS = 100
MAX_RPM = 60_000

# D28 (docs/decisions.md): Silero VAD segmentation defaults, onnx-asr's own (its segments are the
# reference our tests compare against). Probability >= threshold starts speech, < neg_threshold
# (None: threshold - 0.15) ends it; shorter speech is dropped, closer segments merge, each is
# padded, and longer speech is cut (None: never; files use their own window planner instead).
VAD_THRESHOLD = 0.5
VAD_NEG_THRESHOLD: float | None = None
VAD_MIN_SPEECH_MS = 250.0
VAD_MIN_SILENCE_MS = 100.0
VAD_SPEECH_PAD_MS = 30.0
VAD_MAX_SPEECH_SECONDS: float | None = 20.0
# Files with VAD: speech segments closer than this share a window (a short pause keeps its
# context); longer pauses are skipped (gigastt/engine/windows.py).
VAD_FILE_MERGE_GAP_SECONDS = 1.0
# Files keep every speech segment (no minimum length: a lone short word is still a word) with
# 300 ms of padding: Silero's probability rises a chunk or two after a soft onset and falls
# before a soft ending, and onnx-asr's 30 ms would cut those sounds off (tests/test_vad_files.py).
VAD_FILE_SPEECH_PAD_MS = 300.0
VAD_FILE_MIN_SPEECH_MS = 0.0
# Live sessions with VAD: an utterance ends after min_silence_ms (600 by default, as without VAD)
# of VAD silence; its final covers this much past the speech's end, for the same reason as the
# file padding above (docs/architecture.md §10).
VAD_LIVE_TAIL_MS = 300.0
# --vad auto|on|off (env GIGASTT_VAD): auto = on when the VAD file is there.
VAD_MODES = ("auto", "on", "off")
# D29 hotwords: the server's list (--hotwords-file) and each request's or session's list are
# bounded (the decoder consults the phrase trie at every step); the boost is in nats of
# log-probability per phrase token, chosen by measurement (docs/benchmarks.md "Hotwords").
HOTWORDS_FILE_MAX = 1024
HOTWORDS_REQUEST_MAX = 64
HOTWORD_MAX_CHARS = 64
HOTWORDS_BOOST = 3.0
# A file's per-phrase weight multiplies the boost: bounded so that boost × weight stays a finite
# nudge (at most 10 × HOTWORDS_BOOST_MAX nats), never a number that swamps every score.
HOTWORD_MAX_WEIGHT = 10.0


def default_model_dir() -> Path:
    home = os.environ.get("HOME")
    return Path(home) / ".gigastt" / "models" if home else Path(".gigastt") / "models"


class ConfigError(ValueError):
    """A setting is invalid; the message names it. Usage errors exit 2, file errors exit 1."""


class InvalidSetting(ConfigError):
    """A value of the wrong type or outside ``INT_RANGES``: a usage error (exit 2), whether it
    came from a flag, an environment variable or the ``--config`` file."""


@dataclass(frozen=True, slots=True)
class Limits:
    """The runtime limits that a ``--config`` file may set and SIGHUP reloads."""

    idle_timeout_secs: int = 300
    ws_frame_max_bytes: int = 524_288
    body_limit_bytes: int = 52_428_800
    rate_limit_per_minute: int = 0
    rate_limit_burst: int = 10
    max_session_secs: int = 3600
    shutdown_drain_secs: int = 10
    pool_checkout_timeout_secs: int = 30
    max_inflight_body_mb: int = 0  # 0: derived, see inflight_body_budget()
    # D30: the longest file (REST, SSE, OpenAI route, jobs) in seconds; 0 = no duration cap (the
    # body limit and the extras' decoded-size cap still apply).
    max_audio_secs: int = 14_400
    # D31 (docs/architecture.md §17): jobs queued + running (at least 1), bytes of audio and
    # results on disk (0 = only the disk), seconds a finished job is kept (0 = until DELETE).
    jobs_max: int = 100
    jobs_max_bytes: int = 10 * (1 << 30)
    jobs_ttl_secs: int = 86_400

    def clamped(self) -> Limits:
        """Apply the documented clamps (drain and checkout at least 1 s, rpm at most 60000)."""
        return dataclasses.replace(
            self,
            shutdown_drain_secs=max(1, self.shutdown_drain_secs),
            pool_checkout_timeout_secs=max(1, self.pool_checkout_timeout_secs),
            rate_limit_per_minute=min(MAX_RPM, self.rate_limit_per_minute),
            jobs_max=max(1, self.jobs_max),
        )

    @property
    def audio_seconds_cap(self) -> float:
        """``max_audio_secs`` as the decoders take it: 0 (no cap) is infinity (D30)."""
        return float(self.max_audio_secs) if self.max_audio_secs else math.inf

    def validate(self) -> None:
        if self.rate_limit_per_minute > 0 and self.rate_limit_burst == 0:
            raise ConfigError(
                "--rate-limit-burst must be > 0 when --rate-limit-per-minute is enabled"
            )


LIMIT_KEYS = tuple(f.name for f in dataclasses.fields(Limits))
LIMIT_ENV = {key: "GIGASTT_" + key.upper() for key in LIMIT_KEYS}

_MIB = 1 << 20
INFLIGHT_BODY_CAP_BYTES = 1 << 30


def inflight_body_budget(limits: Limits, pool_size: int) -> int:
    """Bytes that all request bodies in flight may hold together (docs/runbook.md).

    ``--max-inflight-body-mb`` MiB when set; unset (0), a full-size body for every pool slot and
    one queued behind each, at most 1 GiB: bodies beyond those only wait, holding memory. Never
    below one full-size body, which a smaller budget could never admit.
    """
    if limits.max_inflight_body_mb:
        budget = limits.max_inflight_body_mb * _MIB
    else:
        budget = min(2 * pool_size * limits.body_limit_bytes, INFLIGHT_BODY_CAP_BYTES)
    return max(budget, limits.body_limit_bytes)

_WEEK_SECS = 7 * 24 * 3600
_GIB = 1 << 30
_U32_MAX = (1 << 32) - 1

# The accepted range of every integer setting, one table for flags, environment variables and the
# --config file (at start-up and on SIGHUP). The upper bounds lie far above any useful value; they
# keep every source from handing the server a number it cannot use (docs/runbook.md).
INT_RANGES: dict[str, tuple[int, int]] = {
    "port": (0, 65_535),
    "pool_size": (1, 10_000),
    "threads": (0, 1024),
    "max_connections": (1, 1_000_000),
    "header_timeout_secs": (0, _WEEK_SECS),
    "ws_ping_secs": (0, _WEEK_SECS),
    "idle_timeout_secs": (0, _WEEK_SECS),
    "ws_frame_max_bytes": (0, _GIB),
    "body_limit_bytes": (0, _GIB),
    "rate_limit_per_minute": (0, _U32_MAX),  # then clamped to MAX_RPM
    "rate_limit_burst": (0, _U32_MAX),
    "max_session_secs": (0, _WEEK_SECS),
    "shutdown_drain_secs": (0, _WEEK_SECS),
    "pool_checkout_timeout_secs": (0, _WEEK_SECS),
    "max_inflight_body_mb": (0, 1 << 20),
    "max_audio_secs": (0, _WEEK_SECS),
    "jobs_max": (0, 1_000_000),
    "jobs_max_bytes": (0, 1 << 50),
    "jobs_ttl_secs": (0, _WEEK_SECS),
}
POOL_SIZE_AUTO = "auto"
# A limits file is a few lines; anything bigger is a mistake (and is never read whole).
MAX_CONFIG_FILE_BYTES = 64 * 1024


def check_setting(key: str, name: str, value: object) -> int:
    """``value`` if it is an integer within ``INT_RANGES[key]``; ``name`` is what the error shows
    (the flag, variable or file key), never the value."""
    low, high = INT_RANGES[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidSetting(f"{name} must be an integer in {low}..{high}")
    return value


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """Everything ``gigastt serve`` needs; built once at start-up (limits may be reloaded)."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    model_dir: Path = field(default_factory=default_model_dir)
    pool_size: int = 4
    # --pool-size auto (D27): pool_size becomes the live capacity measured after the model
    # loads, before the server listens (gigastt/engine/capacity.py): one session's cost per
    # second of live audio is (encoder seconds per audio second) x (re-encode factor: seconds
    # encoded per live second, dictation at the default partial cadence), and the pool is
    # floor(0.8 / that), at least 1 (docs/runbook.md "Threads, priorities and capacity").
    pool_auto: bool = False
    bind_all: bool = False
    allow_origins: tuple[str, ...] = ()
    cors_allow_any: bool = False
    metrics: bool = False
    skip_quantize: bool = False
    trust_proxy: bool = False
    config_path: Path | None = None
    # D23: the file with the API key (flag --api-key-file, env GIGASTT_API_KEY_FILE); None = no
    # key. Read once at start-up; the key itself is never kept here.
    api_key_file: Path | None = None
    # The browser page on `GET /` and `/ui/...` (gigastt/server/ui.py); off with --no-ui or
    # GIGASTT_UI=0.
    ui: bool = True
    # D31: the directory of the job queue (flag --jobs-dir, env GIGASTT_JOBS_DIR); None = no
    # /v1/jobs routes. Fixed at start-up.
    jobs_dir: Path | None = None
    # D28: --vad auto|on|off (env GIGASTT_VAD) and --vad-model PATH (env GIGASTT_VAD_MODEL);
    # None = <model dir>/silero_vad.onnx, checked against its pin.
    vad: str = "auto"
    vad_model: Path | None = None
    # D29: --model-variant auto|e2e_rnnt|rnnt|ctc|e2e_ctc (env GIGASTT_MODEL_VARIANT), the
    # server's phrase list --hotwords-file (env GIGASTT_HOTWORDS_FILE) and --hotwords-boost
    # (env GIGASTT_HOTWORDS_BOOST).
    model_variant: str = "auto"
    hotwords_file: Path | None = None
    hotwords_boost: float = HOTWORDS_BOOST
    # Mirror for the model files (flag --model-url, env GIGASTT_MODEL_URL); None = Hugging Face.
    model_url: str | None = field(default=None, repr=False)  # may hold a password
    max_connections: int = 256
    header_timeout_secs: float = 10.0
    keepalive_timeout_secs: float = 75.0
    # A closing connection whose peer does not take its last bytes by then is cut off.
    close_timeout_secs: float = 5.0
    ws_ping_secs: int = 20
    threads: int = 0
    limits: Limits = field(default_factory=Limits)
    # Names of limits fixed by env or flag at start-up: a reload never overrides them (D12).
    pinned: frozenset[str] = frozenset()


# --- boolean and integer parsing -------------------------------------------------------------

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_bool(name: str, value: str) -> bool:
    """Decision D6: 1/0, true/false, yes/no, on/off, case-insensitive."""
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"invalid boolean {value!r} for {name} (use 1/0, true/false, yes/no, on/off)")


def parse_uint(name: str, value: str, *, bits: int = 64) -> int:
    text = value.strip()
    if not text.isdigit() or not text.isascii():
        raise ConfigError(f"invalid value {value!r} for {name}: expected a non-negative integer")
    # Length first: int() refuses strings of more than 4300 digits with a plain ValueError.
    if len(text.lstrip("0")) > 20 or int(text) >= 1 << bits:
        raise ConfigError(f"{name} is out of range")
    return int(text)


def parse_setting(key: str, name: str, value: str) -> int:
    """An integer setting given as text (flag or environment variable ``name``), range-checked."""
    try:
        number = parse_uint(name, value)
    except ConfigError as exc:
        raise InvalidSetting(str(exc)) from exc
    return check_setting(key, name, number)


def parse_model_url(name: str, value: str) -> str:
    """A model mirror base URL: ``http(s)://[user:password@]host[:port][/path]``; files are
    fetched as ``<url>/<file>``. A URL with ``@`` is never echoed: it may hold a password."""
    text = value.strip()
    shown = repr(value) if "@" not in value else "(not shown: it may hold a password)"
    try:
        parts = urllib.parse.urlsplit(text)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is not a number below 65536, an unclosed [IPv6 host
        valid = False
    if not valid:
        raise ConfigError(f"invalid URL {shown} for {name}: expected"
                          " http(s)://[user:password@]host[:port]/path")
    return text


# --- bind guard ---------------------------------------------------------------------------------


def is_loopback_host(host: str) -> bool:
    """The bind guard's loopback test (D5): ``localhost``, ``::1``, ``[::1]``, 127.0.0.0/8."""
    text = host.strip().lower()
    if text in ("localhost", "::1"):
        return True
    try:
        address = ipaddress.ip_address(text.removeprefix("[").removesuffix("]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        return address == ipaddress.IPv6Address("::1")
    return address.is_loopback


def bind_allowed(host: str, bind_all: bool, env: Mapping[str, str]) -> bool:
    if is_loopback_host(host) or bind_all:
        return True
    return env.get("GIGASTT_ALLOW_BIND_ANY", "").strip() in ("1", "true", "TRUE", "yes", "YES")


def bind_refusal(host: str) -> str:
    return (
        f"refusing to bind to '{host}': non-loopback addresses require `--bind-all`"
        " (or env GIGASTT_ALLOW_BIND_ANY=1) to prevent accidental public exposure of local"
        " transcription"
    )


def listen_host(host: str) -> str:
    """The address to bind: brackets dropped, ``localhost`` resolved to 127.0.0.1 (decision D5)."""
    text = host.strip()
    if text.lower() == "localhost":
        return "127.0.0.1"
    return text.removeprefix("[").removesuffix("]")


# --- config file ----------------------------------------------------------------------------------


def read_limits_file(path: Path) -> dict[str, int]:
    """The integer limit keys set in a TOML file; unknown keys ignored, bad values rejected.

    Raises ConfigError (InvalidSetting for a bad value); error messages never quote the file.
    """
    try:
        text = _read_config_bytes(path).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"Failed to parse config file: {path}: not UTF-8 text") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"Failed to parse config file: {path}: {exc}") from exc
    except ValueError as exc:  # an integer literal of more than 4300 digits
        raise ConfigError(f"Failed to parse config file: {path}: number too long") from exc
    except RecursionError as exc:
        raise ConfigError(f"Failed to parse config file: {path}: nested too deeply") from exc
    values: dict[str, int] = {}
    for key in LIMIT_KEYS:
        if key in data:
            try:
                values[key] = check_setting(key, key, data[key])
            except InvalidSetting as exc:
                raise InvalidSetting(f"Invalid config file: {path}: {exc}") from None
    return values


def _read_config_bytes(path: Path) -> bytes:
    def failed(reason: str | None) -> ConfigError:
        return ConfigError(f"Failed to read config file: {path}: {reason}")

    return read_small_file(path, MAX_CONFIG_FILE_BYTES, failed)


def read_small_file(path: Path, limit: int,
                    failed: Callable[[str | None], Exception]) -> bytes:
    """A regular file of at most ``limit`` bytes. Anything else (a FIFO, a device) is refused
    before it is read, so that reading can never block or run away."""
    try:
        # stat first: opening some devices has effects; fstat after: the path may have changed.
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise failed("not a regular file")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise failed("not a regular file")
            raw = handle.read(limit + 1)
    except OSError as exc:
        raise failed(exc.strerror) from exc
    if len(raw) > limit:
        raise failed(f"larger than {limit // 1024} KiB")
    return raw


MAX_API_KEY_FILE_BYTES = 4096
MIN_API_KEY_CHARS = 16


def read_api_key_file(path: Path) -> str:
    """The API key (D23): the file's one line, newline stripped, at least MIN_API_KEY_CHARS
    visible ASCII characters without spaces (what an ``Authorization`` header can carry).

    Raises InvalidSetting (exit 2); messages name the file and never quote its content.
    """
    def bad(reason: str | None) -> InvalidSetting:
        return InvalidSetting(f"invalid API key file {path}: {reason}")

    raw = read_small_file(path, MAX_API_KEY_FILE_BYTES, bad)
    key = raw.removesuffix(b"\n").removesuffix(b"\r")
    if b"\n" in key or b"\r" in key:
        raise bad("the key must be one line")
    if not all(0x21 <= b <= 0x7E for b in key):
        raise bad("the key must be visible ASCII characters without spaces")
    if len(key) < MIN_API_KEY_CHARS:
        raise bad(f"the key must be at least {MIN_API_KEY_CHARS} characters")
    return key.decode("ascii")


def merged_limits(
    file_values: Mapping[str, int], overrides: Mapping[str, int]
) -> Limits:
    """Defaults < file < overrides (the env and flag values given at start-up)."""
    return Limits(**{**file_values, **overrides}).clamped()


def reload_limits(config: ServeConfig, overrides: Mapping[str, int]) -> Limits:
    """Limits after SIGHUP: the file re-read, start-up overrides kept on top (D12)."""
    if config.config_path is None:
        raise ConfigError("no config file specified")
    limits = merged_limits(read_limits_file(config.config_path), overrides)
    limits.validate()
    return limits


# --- serve arguments --------------------------------------------------------------------------

_SERVE_ENV_BOOLS = {
    "metrics": "GIGASTT_METRICS",
    "skip_quantize": "GIGASTT_SKIP_QUANTIZE",
    "trust_proxy": "GIGASTT_TRUST_PROXY",
    "ui": "GIGASTT_UI",
}
_SERVE_ENV_INTS = {**LIMIT_ENV, "max_connections": "GIGASTT_MAX_CONNECTIONS",
                   "ws_ping_secs": "GIGASTT_WS_PING_SECS",
                   "header_timeout_secs": "GIGASTT_HEADER_TIMEOUT_SECS"}


_LIMIT_NOTES = {"max_inflight_body_mb": ": 2 x pool size x body limit, at most 1024",
                "max_audio_secs": "; 0 = no duration cap", "jobs_max": "; at least 1",
                "jobs_max_bytes": "; 0 = only the disk", "jobs_ttl_secs": "; 0 = until DELETE"}


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``gigastt serve``; unset flags stay ``None`` so env and file can fill them."""
    d = ServeConfig()
    lim = Limits()
    uint = _flag_type
    parser.add_argument("-p", "--port", type=uint("port"), default=None,
                        help=f"TCP port (default {d.port}; 0 = any free port)")
    parser.add_argument("--host", default=None, help=f"bind address (default {d.host})")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="model directory (default ~/.gigastt/models)")
    parser.add_argument("--pool-size", type=_pool_size_type, default=None,
                        help=f"concurrent inference sessions/jobs, or `auto`: the live sessions"
                             f" this machine carries in real time, measured at start-up"
                             f" (default {d.pool_size})")
    parser.add_argument("--bind-all", action="store_true", default=None,
                        help="allow a non-loopback --host (also env GIGASTT_ALLOW_BIND_ANY=1)")
    parser.add_argument("--allow-origin", action="append", default=None, metavar="URL",
                        help="extra allowed browser Origin (repeatable; `null` must be listed "
                        "to be allowed)")
    parser.add_argument("--cors-allow-any", action="store_true", default=None,
                        help="allow every Origin (access-control-allow-origin: *)")
    for key in LIMIT_KEYS:
        parser.add_argument("--" + key.replace("_", "-"), type=uint(key), default=None,
                            help=f"(env {LIMIT_ENV[key]}, default {getattr(lim, key)}"
                                 f"{_LIMIT_NOTES.get(key, '')})")
    parser.add_argument("--metrics", action="store_true", default=None,
                        help="serve Prometheus metrics on /metrics (env GIGASTT_METRICS)")
    parser.add_argument("--skip-quantize", action="store_true", default=None,
                        help="do not create the INT8 encoder (env GIGASTT_SKIP_QUANTIZE)")
    parser.add_argument("--model-url", type=argparse_model_url, default=None, metavar="URL",
                        help="download missing model files from this mirror instead of Hugging"
                             " Face (env GIGASTT_MODEL_URL)")
    parser.add_argument("--trust-proxy", action="store_true", default=None,
                        help="also trust forwarding headers from RFC 1918/ULA peers"
                             " (env GIGASTT_TRUST_PROXY)")
    parser.add_argument("--max-connections", type=uint("max_connections"), default=None,
                        help=f"open TCP connections cap (env GIGASTT_MAX_CONNECTIONS,"
                             f" default {d.max_connections})")
    parser.add_argument("--header-timeout-secs", type=uint("header_timeout_secs"), default=None,
                        help=f"request head deadline (env GIGASTT_HEADER_TIMEOUT_SECS,"
                             f" default {int(d.header_timeout_secs)})")
    parser.add_argument("--ws-ping-secs", type=uint("ws_ping_secs"), default=None,
                        help=f"WebSocket keep-alive ping interval, 0 = off"
                             f" (env GIGASTT_WS_PING_SECS, default {d.ws_ping_secs})")
    parser.add_argument("--threads", type=uint("threads"), default=None,
                        help="onnxruntime intra-op threads (default 0 = one per core)")
    parser.add_argument("--config", type=Path, default=None, dest="config_path",
                        help="TOML file with runtime limits, re-read on SIGHUP")
    parser.add_argument("--no-ui", dest="ui", action="store_false", default=None,
                        help="do not serve the browser page on / and /ui/ (env GIGASTT_UI=0)")
    parser.add_argument("--api-key-file", type=Path, default=None, metavar="PATH",
                        help="require the key in this file (one line, at least"
                             f" {MIN_API_KEY_CHARS} characters) as a bearer token on every"
                             " route but /health and /ready; read at start-up only"
                             " (env GIGASTT_API_KEY_FILE)")
    add_vad_arguments(parser)
    add_model_variant_argument(parser)
    add_hotwords_arguments(parser)
    parser.add_argument("--jobs-dir", type=Path, default=None, metavar="DIR",
                        help="enable the durable job API /v1/jobs, its queue and results in"
                             " DIR (env GIGASTT_JOBS_DIR; docs/runbook.md \"Jobs\")")


MODEL_VARIANTS = ("auto", "e2e_rnnt", "rnnt", "ctc", "e2e_ctc")
HOTWORDS_BOOST_MAX = 20.0


def add_model_variant_argument(parser: argparse.ArgumentParser,
                               *flags: str) -> None:
    """``--model-variant`` (D29), shared by ``serve``, ``transcribe``, ``download`` (also as
    ``--variant``) and ``quantize``."""
    parser.add_argument(*(flags or ("--model-variant",)), dest="model_variant",
                        choices=MODEL_VARIANTS, default=None,
                        help="which GigaAM v3 head to use: auto = the only one in the model"
                             " directory, e2e_rnnt when several are (env"
                             " GIGASTT_MODEL_VARIANT, default auto)")


def add_hotwords_arguments(parser: argparse.ArgumentParser) -> None:
    """``--hotwords-file`` and ``--hotwords-boost`` (D29), shared by ``serve`` and
    ``transcribe``."""
    parser.add_argument("--hotwords-file", type=Path, default=None, metavar="PATH",
                        help="phrases to bias recognition towards: UTF-8, one per line,"
                             f" optionally TAB and a weight (0, {HOTWORD_MAX_WEIGHT:g}]; at"
                             f" most {HOTWORDS_FILE_MAX} (env GIGASTT_HOTWORDS_FILE)")
    parser.add_argument("--hotwords-boost", type=_boost_type, default=None, metavar="NATS",
                        help=f"log-probability added to a phrase token (env"
                             f" GIGASTT_HOTWORDS_BOOST, default {HOTWORDS_BOOST})")


def parse_boost(name: str, value: str) -> float:
    """A hotword boost: a number in (0, HOTWORDS_BOOST_MAX]."""
    try:
        boost = float(value.strip())
    except ValueError:
        boost = math.nan
    if not (0 < boost <= HOTWORDS_BOOST_MAX):
        raise InvalidSetting(f"{name} must be a number above 0 and at most {HOTWORDS_BOOST_MAX}")
    return boost


def _boost_type(value: str) -> float:
    try:
        return parse_boost("--hotwords-boost", value)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def model_settings(args: argparse.Namespace, env: Mapping[str, str]
                   ) -> tuple[str, Path | None, float]:
    """``--model-variant``, ``--hotwords-file``, ``--hotwords-boost`` and their variables (flag
    first; D29)."""
    variant = getattr(args, "model_variant", None)
    if variant is None and env.get("GIGASTT_MODEL_VARIANT", "").strip():
        variant = env["GIGASTT_MODEL_VARIANT"].strip().lower()
        if variant not in MODEL_VARIANTS:
            raise ConfigError(f"GIGASTT_MODEL_VARIANT must be one of {', '.join(MODEL_VARIANTS)}")
    path = getattr(args, "hotwords_file", None)
    if path is None and "GIGASTT_HOTWORDS_FILE" in env:
        if not env["GIGASTT_HOTWORDS_FILE"].strip():
            raise ConfigError("GIGASTT_HOTWORDS_FILE is empty: name the hotwords file or unset it")
        path = Path(env["GIGASTT_HOTWORDS_FILE"])
    boost = getattr(args, "hotwords_boost", None)
    if boost is None and "GIGASTT_HOTWORDS_BOOST" in env:
        boost = parse_boost("GIGASTT_HOTWORDS_BOOST", env["GIGASTT_HOTWORDS_BOOST"])
    return variant or "auto", path, HOTWORDS_BOOST if boost is None else boost


def add_vad_arguments(parser: argparse.ArgumentParser) -> None:
    """``--vad`` and ``--vad-model`` (D28), shared by ``serve`` and ``transcribe``."""
    parser.add_argument("--vad", choices=VAD_MODES, default=None,
                        help="Silero voice activity detection: auto = on when the VAD file is"
                             " there, on = refuse to start without a usable one (env"
                             " GIGASTT_VAD, default auto)")
    parser.add_argument("--vad-model", type=Path, default=None, metavar="PATH",
                        help="the VAD file to use instead of <model dir>/silero_vad.onnx"
                             " (env GIGASTT_VAD_MODEL)")


def vad_settings(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[str, Path | None]:
    """``--vad`` / ``GIGASTT_VAD`` and ``--vad-model`` / ``GIGASTT_VAD_MODEL`` (flag first)."""
    mode = getattr(args, "vad", None)
    if mode is None and "GIGASTT_VAD" in env:
        mode = env["GIGASTT_VAD"].strip().lower()
        if mode not in VAD_MODES:
            raise ConfigError("GIGASTT_VAD must be auto, on or off")
    path = getattr(args, "vad_model", None)
    if path is None and "GIGASTT_VAD_MODEL" in env:
        if not env["GIGASTT_VAD_MODEL"].strip():
            raise ConfigError("GIGASTT_VAD_MODEL is empty: name the VAD file or unset it")
        path = Path(env["GIGASTT_VAD_MODEL"])
    return mode or "auto", path


def _flag_type(key: str) -> Callable[[str], int]:
    """The argparse ``type`` of an integer flag: parsed and range-checked like its env variable."""
    def parse(value: str) -> int:
        try:
            return parse_setting(key, "value", value)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    return parse


def _pool_size_type(value: str) -> int | str:
    """``--pool-size``: an integer in range, or ``auto`` (D27)."""
    if value == POOL_SIZE_AUTO:
        return value
    try:
        return _flag_type("pool_size")(value)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{exc}, or `auto`") from exc


def argparse_model_url(value: str) -> str:
    try:
        return parse_model_url("--model-url", value)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def serve_config(args: argparse.Namespace, env: Mapping[str, str]) -> ServeConfig:
    """Combine flags, environment and defaults; raises ConfigError (a usage error).

    The config file is applied separately (``with_config_file``): reading it can fail at run
    time (exit 1), while its bad values are usage errors like these (InvalidSetting, exit 2).
    """
    values: dict[str, Any] = {}
    for name, var in _SERVE_ENV_BOOLS.items():
        if var in env:
            values[name] = parse_bool(var, env[var])
    ints: dict[str, int] = {}
    for name, var in _SERVE_ENV_INTS.items():
        if var in env:
            ints[name] = parse_setting(name, var, env[var])
    for name in (*LIMIT_KEYS, "max_connections", "ws_ping_secs", "header_timeout_secs"):
        flag = getattr(args, name, None)
        if flag is not None:
            ints[name] = flag
    if env.get("GIGASTT_MODEL_URL", "").strip():
        values["model_url"] = parse_model_url("GIGASTT_MODEL_URL", env["GIGASTT_MODEL_URL"])
    if "GIGASTT_API_KEY_FILE" in env:
        # Set but empty is refused, not read as "no key": a security setting fails closed.
        if not env["GIGASTT_API_KEY_FILE"].strip():
            raise ConfigError("GIGASTT_API_KEY_FILE is empty: name the API key file or unset it")
        values["api_key_file"] = Path(env["GIGASTT_API_KEY_FILE"])
    if "GIGASTT_JOBS_DIR" in env:
        if not env["GIGASTT_JOBS_DIR"].strip():
            raise ConfigError("GIGASTT_JOBS_DIR is empty: name the jobs directory or unset it")
        values["jobs_dir"] = Path(env["GIGASTT_JOBS_DIR"])
    for name in ("host", "port", "model_dir", "pool_size", "bind_all", "cors_allow_any",
                 "metrics", "skip_quantize", "trust_proxy", "config_path", "threads",
                 "model_url", "api_key_file", "jobs_dir", "ui"):
        flag = getattr(args, name, None)
        if flag is not None:
            values[name] = flag
    values["vad"], values["vad_model"] = vad_settings(args, env)
    (values["model_variant"], values["hotwords_file"],
     values["hotwords_boost"]) = model_settings(args, env)
    if values.get("pool_size") == POOL_SIZE_AUTO:
        del values["pool_size"]
        values["pool_auto"] = True
    if args.allow_origin:
        values["allow_origins"] = tuple(args.allow_origin)
    overrides = {k: v for k, v in ints.items() if k in LIMIT_KEYS}
    for name in ("max_connections", "ws_ping_secs"):
        if name in ints:
            values[name] = ints[name]
    if "header_timeout_secs" in ints:
        values["header_timeout_secs"] = float(max(1, ints["header_timeout_secs"]))
    return ServeConfig(
        **values, limits=merged_limits({}, overrides), pinned=frozenset(overrides)
    )


def with_config_file(config: ServeConfig) -> ServeConfig:
    """Apply the ``--config`` file under the start-up overrides and validate the result."""
    overrides = {k: getattr(config.limits, k) for k in config.pinned}
    if config.config_path is None:
        limits = merged_limits({}, overrides)
    else:
        limits = merged_limits(read_limits_file(config.config_path), overrides)
    limits.validate()
    return dataclasses.replace(config, limits=limits)


def startup_overrides(config: ServeConfig) -> dict[str, int]:
    return {k: getattr(config.limits, k) for k in config.pinned}

